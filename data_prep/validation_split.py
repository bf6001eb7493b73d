r"""A validation split carved from the training groups of a UCF101-layout split.

    python -m data_prep.validation_split --splits=DIR --out=DIR [--split=1] [--groups_per_class=1]

Recipes (learning rate, schedule, fusion weights, ...) must be chosen on data the test numbers
never see. UCF101's official splits keep the clips of one group (same actor / scene, `gXX` in
the file name) on one side; so does this: for every class, the last `groups_per_class` training
groups become the validation list. The output is a split folder in the official format
(`classInd.txt`, `trainlist0<k>.txt` = the remaining training clips, `testlist0<k>.txt` = the
held-out clips, CRLF), so `data_prep.prepare --splits=OUT` prepares it like any split: its
"test" shards are the validation set.
"""

from __future__ import annotations

import collections
import pathlib
import re
from typing import Sequence

from absl import app
from absl import flags

CLASS_INDEX = "classInd.txt"
CRLF = "\r\n"
GROUP_PATTERN = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)


def _read_lines(path: pathlib.Path) -> list[str]:
  if not path.is_file():
    raise FileNotFoundError(f"validation_split: expected the split file {path}")
  return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _group(line: str, path: pathlib.Path) -> int:
  match = GROUP_PATTERN.search(line.split()[0])
  if not match:
    raise ValueError(f"validation_split: {path}: no '_gXX_cYY' group in line {line!r}")
  return int(match.group(1))


def carve(train_lines: Sequence[str], groups_per_class: int,
          path: pathlib.Path = pathlib.Path("trainlist")) -> tuple[list[str], list[str]]:
  """(remaining train lines, validation lines): the last `groups_per_class` groups of each class
  (class = the line's label, the number after the path) are held out."""
  groups = collections.defaultdict(set)
  for line in train_lines:
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f"validation_split: {path}: expected '<path> <label>', got {line!r}")
    groups[parts[1]].add(_group(line, path))
  held_out = {label: set(sorted(g)[-groups_per_class:]) for label, g in groups.items()}
  for label, g in groups.items():
    if len(g) <= groups_per_class:
      raise ValueError(f"validation_split: {path}: class {label} has {len(g)} training "
                       f"group(s); cannot hold out {groups_per_class} and keep one to train on")
  train, val = [], []
  for line in train_lines:
    label = line.split()[1]
    (val if _group(line, path) in held_out[label] else train).append(line)
  return train, val


def write_validation_split(splits: str | pathlib.Path, out: str | pathlib.Path, split: int = 1,
                           groups_per_class: int = 1) -> dict[str, int]:
  """Writes the carved split folder `out`; returns {'train': n, 'validation': n}."""
  splits, out = pathlib.Path(splits), pathlib.Path(out)
  train_path = splits / f"trainlist0{split}.txt"
  classes = _read_lines(splits / CLASS_INDEX)
  train, val = carve(_read_lines(train_path), groups_per_class, train_path)
  out.mkdir(parents=True, exist_ok=True)
  for name, lines in ((CLASS_INDEX, classes), (f"trainlist0{split}.txt", train),
                      (f"testlist0{split}.txt", [line.split()[0] for line in val])):
    with open(out / name, "w", encoding="utf-8", newline="") as f:
      f.write("".join(line + CRLF for line in lines))
  return {"train": len(train), "validation": len(val)}


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  counts = write_validation_split(f.splits, f.out, f.split, f.groups_per_class)
  print(f"wrote {f.out}: {counts['train']} training and {counts['validation']} validation clips")


if __name__ == "__main__":
  flags.DEFINE_string("splits", None, "Official split folder (classInd.txt, trainlist0k.txt).",
                      required=True)
  flags.DEFINE_string("out", None, "Output split folder.", required=True)
  flags.DEFINE_integer("split", 1, "Which official split to carve (1-3).")
  flags.DEFINE_integer("groups_per_class", 1, "Training groups per class held out.")
  app.run(main)
