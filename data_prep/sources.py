"""Dataset sources: official split files → a list of `VideoItem`s.

Readers (each returns a `Source`: class names, items, and listed-but-absent videos):
  * UCF101 (`ucf101_source`): `classInd.txt` (`<1-based idx> <Name>`), `trainlist0N.txt`
    (`<Class>/v_<Class>_gXX_cYY.avi <1-based idx>`), `testlist0N.txt` (path only). The official
    files have CRLF line endings. Labels are made 0-based (`classInd` index − 1); test labels come
    from the class folder of the path. (Quirk kept as is: the folder `HandstandPushups` holds
    files named `v_HandStandPushups_*`; the label comes from the folder, the id from the file.)
  * HMDB51 (`hmdb51_source`): 51 × `<class>_test_split<N>.txt`, lines `<video>.avi <0|1|2> `
    (trailing space) with 1 = train, 2 = test, 0 = unused (not prepared, counted in `unused`).
    Class order: the SORTED class names (= mmaction2's `label_map.txt`). The official
    `class_list.txt` is NOT used for the order: its order is not sorted (`kick_ball` before
    `kick`), some names carry trailing spaces and its last line has no newline. If it is present,
    its (stripped) set of names must equal the split-file classes.
  * Generic list (`list_source`): lines `<path> <label>`; path relative to the videos directory
    (or absolute); label an int (0-based) or a class name (classes = sorted names). Split 'all'.
  * TFDS (`tfds_source`): a `tensorflow_datasets` builder (e.g. `ucf101`, whose config
    `ucf101_<N>_256` is official split N). Items point into the dataset (`tfds://name/split/index`);
    the frames are streamed by `iter_tfds_frames` (never downloaded here: the dataset must already
    be prepared under its data_dir, or mocked with `tfds.testing.mock_data`).

Videos are looked up as `<videos>/<Class>/<file>` (official folder layout) and then as
`<videos>/<file>` (flat layout); HMDB51 also accepts the `hmdb51_<file>` name torchvision uses.
A split file or videos directory that does not exist stops at once with an error naming the path;
listed videos that are absent are returned in `Source.missing` (recorded in the manifest).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterable, Iterator, Sequence

# UCF101 split file names (official ucfTrainTestlist.zip).
UCF101_CLASS_INDEX = "classInd.txt"
UCF101_TRAIN_LIST = "trainlist{split:02d}.txt"
UCF101_TEST_LIST = "testlist{split:02d}.txt"
# HMDB51 split file names (official testTrainMulti_7030_splits).
HMDB51_SPLIT_FILE = "{name}_test_split{split}.txt"
HMDB51_SPLIT_SUFFIX = "_test_split{split}.txt"
HMDB51_CLASS_LIST = "class_list.txt"
HMDB51_TRAIN, HMDB51_TEST, HMDB51_UNUSED = "1", "2", "0"
# torchvision renames one HMDB51 test asset with this prefix (seen in the test material).
HMDB51_ALT_PREFIX = "hmdb51_"
OFFICIAL_SPLITS = (1, 2, 3)
TFDS_SCHEME = "tfds://"
LIST_SPLIT = "all"


@dataclasses.dataclass(frozen=True, order=True)
class VideoItem:
  """One video to prepare. `label` is 0-based; `split` is 'train', 'test' or 'all'."""
  path: str
  label: int
  video_id: str
  split: str


@dataclasses.dataclass(frozen=True)
class Source:
  """What a reader found: `classes[label]` is the class name; `missing` = [{path, reason}]."""
  dataset: str
  classes: tuple[str, ...]
  items: tuple[VideoItem, ...]
  missing: tuple[dict, ...] = ()
  info: dict = dataclasses.field(default_factory=dict)


class SourceError(ValueError):
  """A split file, list or videos directory is absent or malformed (message names the path)."""


def _require_file(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_file():
    raise SourceError(f"{what} not found: expected the file {path}")
  return path


def _require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    raise SourceError(f"{what} not found: expected the directory {path}")
  return path


def _check_split(split: int) -> int:
  if split not in OFFICIAL_SPLITS:
    raise SourceError(f"split must be one of {OFFICIAL_SPLITS}, got {split!r}")
  return split


def _read_lines(path: pathlib.Path) -> list[str]:
  """Non-empty lines with CR/LF and surrounding whitespace stripped (official files mix both)."""
  with open(path, "r", encoding="utf-8") as f:
    return [line.strip() for line in f.read().splitlines() if line.strip()]


def _video_id(filename: str) -> str:
  return pathlib.PurePosixPath(filename).stem


def _locate(videos_dir: pathlib.Path, class_dir: str, filename: str,
            alt_names: Sequence[str] = ()) -> pathlib.Path | None:
  """Finds a listed video in the class-folder layout or the flat layout."""
  for name in (filename, *alt_names):
    for candidate in (videos_dir / class_dir / name, videos_dir / name):
      if candidate.is_file():
        return candidate
  return None


def _resolve(videos_dir: pathlib.Path, entries: Iterable[tuple[str, str, int, str, str]],
             alt_prefix: str | None = None) -> tuple[list[VideoItem], list[dict]]:
  """entries: (class_dir, filename, label, split, listed_in) → (present items, missing records)."""
  items, missing = [], []
  for class_dir, filename, label, split, listed_in in entries:
    alt = (alt_prefix + filename,) if alt_prefix else ()
    path = _locate(videos_dir, class_dir, filename, alt)
    if path is None:
      missing.append({"path": str(videos_dir / class_dir / filename),
                      "reason": f"listed in {listed_in} but not found (also looked for "
                                f"{videos_dir / filename})"})
    else:
      items.append(VideoItem(str(path), label, _video_id(filename), split))
  _check_unique_ids(items)
  return items, missing


def _check_unique_ids(items: Sequence[VideoItem]) -> None:
  seen: dict[str, str] = {}
  for item in items:
    if item.video_id in seen:
      raise SourceError(f"video id {item.video_id!r} is used twice: {seen[item.video_id]} and "
                        f"{item.path} (video ids key the shards and must be unique)")
    seen[item.video_id] = item.path


# ----------------------------------------------------------------------------------------------
# UCF101


def read_ucf101_classes(splits_dir: str | os.PathLike) -> list[str]:
  """classInd.txt → class names ordered by their 1-based index (name at position idx − 1)."""
  path = _require_file(pathlib.Path(splits_dir) / UCF101_CLASS_INDEX, "UCF101 class index")
  by_index = {}
  for line in _read_lines(path):
    fields = line.split()
    if len(fields) != 2 or not fields[0].isdigit():
      raise SourceError(f"{path}: expected '<1-based index> <ClassName>', got {line!r}")
    by_index[int(fields[0])] = fields[1]
  if sorted(by_index) != list(range(1, len(by_index) + 1)):
    raise SourceError(f"{path}: class indices must be 1..{len(by_index)} without gaps")
  return [by_index[i] for i in range(1, len(by_index) + 1)]


def read_ucf101_list(path: str | os.PathLike, classes: Sequence[str],
                     split: str) -> list[tuple[str, str, int]]:
  """A train/test list → [(class_dir, filename, 0-based label)].

  Train lines carry a 1-based class index, which must agree with the class folder; test lines
  are the path only, the label comes from the class folder.
  """
  path = pathlib.Path(path)
  index = {name: i for i, name in enumerate(classes)}
  entries = []
  for line in _read_lines(path):
    fields = line.split()
    rel = pathlib.PurePosixPath(fields[0].replace("\\", "/"))
    class_dir = rel.parent.name
    if class_dir not in index:
      raise SourceError(f"{path}: class folder {class_dir!r} of {fields[0]!r} is not in "
                        f"{UCF101_CLASS_INDEX}")
    label = index[class_dir]
    if len(fields) > 1 and int(fields[1]) - 1 != label:
      raise SourceError(f"{path}: {fields[0]!r} has index {fields[1]} but its folder "
                        f"{class_dir!r} is class {label + 1} in {UCF101_CLASS_INDEX}")
    if len(fields) > 2 or (split == "test" and len(fields) != 1):
      raise SourceError(f"{path}: unexpected line {line!r}")
    entries.append((class_dir, rel.name, label))
  return entries


def ucf101_source(videos_dir: str | os.PathLike, splits_dir: str | os.PathLike,
                  split: int = 1) -> Source:
  """Official UCF101 split `split` (1, 2 or 3): train and test items."""
  _check_split(split)
  splits_dir = _require_dir(pathlib.Path(splits_dir), "UCF101 splits directory")
  videos_dir = _require_dir(pathlib.Path(videos_dir), "UCF101 videos directory")
  classes = read_ucf101_classes(splits_dir)
  entries = []
  for name, template in (("train", UCF101_TRAIN_LIST), ("test", UCF101_TEST_LIST)):
    list_path = _require_file(splits_dir / template.format(split=split), f"UCF101 {name} list")
    entries += [(c, f, label, name, str(list_path))
                for c, f, label in read_ucf101_list(list_path, classes, name)]
  items, missing = _resolve(videos_dir, entries)
  return Source("ucf101", tuple(classes), tuple(items), tuple(missing), {"split": split})


# ----------------------------------------------------------------------------------------------
# HMDB51


def hmdb51_classes(splits_dir: str | os.PathLike, split: int = 1) -> list[str]:
  """Sorted class names from the `<class>_test_split<N>.txt` file names (see module doc)."""
  splits_dir = _require_dir(pathlib.Path(splits_dir), "HMDB51 splits directory")
  suffix = HMDB51_SPLIT_SUFFIX.format(split=_check_split(split))
  classes = sorted(p.name[:-len(suffix)] for p in splits_dir.iterdir() if p.name.endswith(suffix))
  if not classes:
    raise SourceError(f"no HMDB51 split files found: expected {splits_dir}/"
                      f"{HMDB51_SPLIT_FILE.format(name='<class>', split=split)}")
  class_list = splits_dir / HMDB51_CLASS_LIST
  if class_list.is_file():
    listed = sorted(_read_lines(class_list))
    if listed != classes:
      raise SourceError(f"{class_list} names {sorted(set(listed) ^ set(classes))} differ from "
                        f"the split files in {splits_dir}")
  return classes


def read_hmdb51_split_file(path: str | os.PathLike) -> list[tuple[str, str]]:
  """`<video>.avi <0|1|2> ` lines → [(filename, flag)]; flags 1 train, 2 test, 0 unused."""
  path = _require_file(pathlib.Path(path), "HMDB51 split file")
  entries = []
  for line in _read_lines(path):
    fields = line.split()
    if len(fields) != 2 or fields[1] not in (HMDB51_TRAIN, HMDB51_TEST, HMDB51_UNUSED):
      raise SourceError(f"{path}: expected '<video>.avi <0|1|2>', got {line!r}")
    entries.append((fields[0], fields[1]))
  return entries


def hmdb51_source(videos_dir: str | os.PathLike, splits_dir: str | os.PathLike,
                  split: int = 1) -> Source:
  """Official HMDB51 split `split`: lines flagged 1 → train, 2 → test, 0 → counted as unused."""
  classes = hmdb51_classes(splits_dir, split)
  videos_dir = _require_dir(pathlib.Path(videos_dir), "HMDB51 videos directory")
  entries, unused = [], 0
  for label, name in enumerate(classes):
    list_path = pathlib.Path(splits_dir) / HMDB51_SPLIT_FILE.format(name=name, split=split)
    for filename, flag in read_hmdb51_split_file(list_path):
      if flag == HMDB51_UNUSED:
        unused += 1
        continue
      entries.append((name, filename, label, "train" if flag == HMDB51_TRAIN else "test",
                      str(list_path)))
  items, missing = _resolve(videos_dir, entries, alt_prefix=HMDB51_ALT_PREFIX)
  return Source("hmdb51", tuple(classes), tuple(items), tuple(missing),
                {"split": split, "unused": unused, "class_order": "sorted class names"})


# ----------------------------------------------------------------------------------------------
# Generic list


def list_source(videos_dir: str | os.PathLike | None, list_file: str | os.PathLike) -> Source:
  """`<path> <label>` lines. Labels: all ints → 0-based indices; otherwise class names (sorted)."""
  list_file = _require_file(pathlib.Path(list_file), "video list")
  root = _require_dir(pathlib.Path(videos_dir), "videos directory") if videos_dir else None
  rows = []
  for line in _read_lines(list_file):
    path, sep, label = line.rpartition(" ")
    if not sep or not path.strip():
      raise SourceError(f"{list_file}: expected '<path> <label>', got {line!r}")
    rows.append((path.strip(), label))
  if all(label.lstrip("-").isdigit() for _, label in rows):
    labels = [int(label) for _, label in rows]
    if labels and min(labels) < 0:
      raise SourceError(f"{list_file}: labels must be 0-based non-negative ints")
    classes = [str(i) for i in range(max(labels, default=-1) + 1)]
  else:
    classes = sorted({label for _, label in rows})
    labels = [classes.index(label) for _, label in rows]
  base = root or list_file.parent
  items, missing = [], []
  for (path, _), label in zip(rows, labels):
    full = pathlib.Path(path) if os.path.isabs(path) else base / path
    if full.is_file():
      items.append(VideoItem(str(full), label, _video_id(full.name), LIST_SPLIT))
    else:
      missing.append({"path": str(full), "reason": f"listed in {list_file} but not found"})
  _check_unique_ids(items)
  return Source("list", tuple(classes), tuple(items), tuple(missing))


# ----------------------------------------------------------------------------------------------
# TFDS


def _tfds_builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder(name, data_dir=data_dir)


def _tfds_dataset(builder, split: str, video_key: str):
  """The split with frames left encoded. Never downloads: an unprepared dataset is an error."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={video_key: tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS's "could not find data in <data_dir>"
    raise SourceError(f"TFDS dataset {builder.name!r} split {split!r} is not prepared under "
                      f"{builder.data_dir} (prepare it with tfds first; this tool never "
                      f"downloads): {e}") from e


def tfds_item_path(name: str, split: str, index: int) -> str:
  return f"{TFDS_SCHEME}{name}/{split}/{index}"


def tfds_source(name: str, splits: Sequence[str] = ("train", "test"), data_dir: str | None = None,
                video_key: str = "video", label_key: str = "label") -> Source:
  """A TFDS video dataset (`name` may carry a config: `ucf101/ucf101_1_256`).

  Reads labels in one pass (video frames left encoded). video_id = `<split>_<index:06d>` (TFDS
  ucf101 has no clip ids), so sorting by id keeps the dataset order.
  """
  builder = _tfds_builder(name, data_dir)
  features = builder.info.features
  if video_key not in features or label_key not in features:
    raise SourceError(f"TFDS dataset {name!r} has features {list(features)}; expected "
                      f"{video_key!r} and {label_key!r}")
  classes = tuple(features[label_key].names)
  items = []
  for split in splits:
    ds = _tfds_dataset(builder, split, video_key).map(lambda ex: ex[label_key])
    items += [VideoItem(tfds_item_path(name, split, i), int(label), f"{split}_{i:06d}", split)
              for i, label in enumerate(ds.as_numpy_iterator())]
  return Source("tfds", classes, tuple(items), (), {"tfds_name": name,
                                                    "tfds_data_dir": data_dir})


def iter_tfds_frames(items: Sequence[VideoItem], data_dir: str | None = None,
                     video_key: str = "video") -> Iterator[tuple[VideoItem, tuple[bytes, ...]]]:
  """Streams (item, encoded frames) for TFDS items, in the order given (one pass per split).

  Items must be sorted by index within each split (as the shard plan orders them).
  """
  by_dataset: dict[tuple[str, str], list[tuple[int, VideoItem]]] = {}
  for item in items:
    name, split, index = item.path[len(TFDS_SCHEME):].rsplit("/", 2)
    by_dataset.setdefault((name, split), []).append((int(index), item))
  for (name, split), wanted in by_dataset.items():
    builder = _tfds_builder(name, data_dir)
    ds = _tfds_dataset(builder, split, video_key).map(lambda ex: ex[video_key])
    pending = iter(wanted)
    index, item = next(pending)
    for i, frames in enumerate(ds.as_numpy_iterator()):
      if i < index:
        continue
      yield item, tuple(bytes(f) for f in frames)
      nxt = next(pending, None)
      if nxt is None:
        break
      index, item = nxt
      if index <= i:
        raise ValueError(f"TFDS items must be sorted by index within a split; {item.path}")


def is_tfds_item(item: VideoItem) -> bool:
  return item.path.startswith(TFDS_SCHEME)
