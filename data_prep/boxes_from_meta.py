r"""Ground truth of another generator's videos in `data_prep.synthetic`'s boxes.json format.

    python -m data_prep.boxes_from_meta --meta=DIR/meta.json --out=DIR/boxes.json

The mechanism metrics (`sta_cnn_jax.mechanism`, `benchmarks.fidelity --boxes`) read boxes.json:
{"frame_size": [H, W], "classes", "videos": {video_id: {"label", "class", "evidence_frames":
[start, stop), "boxes": [[x0, y0, x1, y1] | null per frame]}}}. Synthetic sets written by other
tools often keep the same facts in a per-video meta file keyed by the video's path inside the
UCF101 layout; this reads one of the form

    {"size": [W, H], "classes": [...], "videos": {"<Class>/<name>.avi": {"label": <1-based>,
     "informative": [start, stop), "boxes": [[x0, y0, x1, y1] | null per frame]}}}

(the frame size given as width, height; labels 1-based as in classInd.txt) and writes boxes.json.
The video id is the file name without its extension, as `data_prep` names the videos in its
manifest.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import app
from absl import flags

from data_prep import synthetic

_REQUIRED = ("informative", "boxes", "label")


def convert(meta: dict[str, Any], source: str = "meta") -> dict[str, Any]:
  """The boxes.json dict of a meta dict (module doc); `source` names it in errors."""
  for key in ("size", "classes", "videos"):
    if key not in meta:
      raise ValueError(f"{source}: no {key!r} (expected the keys size, classes, videos)")
  width, height = (int(v) for v in meta["size"])
  classes = list(meta["classes"])
  videos = {}
  for rel, entry in meta["videos"].items():
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
      raise ValueError(f"{source}: video {rel!r} has no {', '.join(missing)}")
    start, stop = (int(v) for v in entry["informative"])
    boxes = entry["boxes"]
    if not 0 <= start <= stop <= len(boxes):
      raise ValueError(f"{source}: video {rel!r}: informative range [{start}, {stop}) is not "
                       f"inside its {len(boxes)} frames")
    label = int(entry["label"]) - 1
    if not 0 <= label < len(classes):
      raise ValueError(f"{source}: video {rel!r}: label {label + 1} is not in 1..{len(classes)}")
    video_id = pathlib.PurePosixPath(rel).stem
    if video_id in videos:
      raise ValueError(f"{source}: two videos are named {video_id!r}")
    videos[video_id] = {"label": label, "class": classes[label],
                        "evidence_frames": [start, stop],
                        "boxes": [None if b is None else [float(v) for v in b] for b in boxes]}
  return {"frame_size": [height, width],
          "box_format": "[x0, y0, x1, y1] in source-frame pixels; null = absent",
          "classes": classes, "converted_from": source, "videos": videos}


def convert_file(meta_path: str | pathlib.Path, out_path: str | pathlib.Path) -> dict[str, Any]:
  meta_path = pathlib.Path(meta_path)
  if not meta_path.is_file():
    raise FileNotFoundError(f"boxes_from_meta: expected the meta file {meta_path}")
  with open(meta_path, encoding="utf-8") as f:
    boxes = convert(json.load(f), str(meta_path))
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(boxes, f, separators=(",", ":"))
  return boxes


FLAGS = flags.FLAGS
flags.DEFINE_string("meta", None, "Per-video meta file (module doc).")
flags.DEFINE_string("out", None, f"Where to write the {synthetic.BOXES_FILE}.")


def main(argv):
  del argv
  boxes = convert_file(FLAGS.meta, FLAGS.out)
  print(f"{FLAGS.out}: {len(boxes['videos'])} videos, frame size {boxes['frame_size']} (H, W)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["meta", "out"])
  app.run(main)
