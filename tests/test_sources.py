"""data_prep.sources: official UCF101 / HMDB51 split files, generic lists, TFDS (mocked)."""

import collections
import re

import pytest

from data_prep import sources

# Line counts of the official split files (ucfTrainTestlist trainlist0N.txt / testlist0N.txt).
UCF101_COUNTS = {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}
HMDB51_PER_SPLIT = {"1": 3570, "2": 1530, "0": 1666}  # train, test, unused; 70/30 per class x 51
HMDB51_NUM_CLASSES = 51


@pytest.fixture(scope="module")
def ucf_splits(testdata_dir):
  return testdata_dir / "splits" / "ucf101"


@pytest.fixture(scope="module")
def hmdb_splits(testdata_dir):
  return testdata_dir / "splits" / "hmdb51"


def _raw_lines(path):
  return path.read_bytes().split(b"\n")


def test_ucf101_class_index_is_1_based(ucf_splits, testdata_dir):
  classes = sources.read_ucf101_classes(ucf_splits)
  assert len(classes) == 101
  # README: SoccerJuggling is 84, Archery 3, Basketball 8 in classInd.txt (1-based).
  assert classes.index("SoccerJuggling") == 83
  assert classes.index("Archery") == 2
  assert classes.index("Basketball") == 7
  assert not any("\r" in c or " " in c for c in classes)
  # Same order as mmaction2's independent 0-based label map.
  mm = (testdata_dir / "label_maps" / "ucf101_label_map_mmaction2.txt").read_text().split()
  assert classes == mm


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_lists_parse_with_exact_counts(ucf_splits, split):
  classes = sources.read_ucf101_classes(ucf_splits)
  train = sources.read_ucf101_list(ucf_splits / f"trainlist{split:02d}.txt", classes, "train")
  test = sources.read_ucf101_list(ucf_splits / f"testlist{split:02d}.txt", classes, "test")
  assert (len(train), len(test)) == UCF101_COUNTS[split]
  # CRLF in the files, none left in the parsed names.
  assert _raw_lines(ucf_splits / f"trainlist{split:02d}.txt")[0].endswith(b"\r")
  assert all("\r" not in f and f.endswith(".avi") for _, f, _ in train + test)
  # Train labels = classInd index - 1 = class folder; every class present in both lists.
  for class_dir, filename, label in train + test:
    # (case-insensitive: the official HandstandPushups folder holds v_HandStandPushups_* files)
    assert classes[label] == class_dir
    assert filename.lower().startswith(f"v_{class_dir}_".lower())
  assert {l for *_, l in train} == {l for *_, l in test} == set(range(101))
  # Train and test videos are disjoint.
  assert not {f for _, f, _ in train} & {f for _, f, _ in test}


def test_ucf101_source_finds_present_videos_and_records_missing(ucf_splits, testdata_dir):
  src = sources.ucf101_source(testdata_dir / "videos" / "ucf101", ucf_splits, split=1)
  by_id = {item.video_id: item for item in src.items}
  # README table: split 1 → Archery & Basketball in test, SoccerJuggling in train.
  assert by_id["v_Archery_g01_c01"].split == "test"
  assert by_id["v_Archery_g01_c01"].label == 2
  assert by_id["v_Basketball_g02_c03"].split == "test"
  assert by_id["v_SoccerJuggling_g23_c01"] == sources.VideoItem(
      str(testdata_dir / "videos" / "ucf101" / "v_SoccerJuggling_g23_c01.avi"), 83,
      "v_SoccerJuggling_g23_c01", "train")
  assert len(src.items) == 5
  assert len(src.missing) == sum(UCF101_COUNTS[1]) - 5
  assert all("not found" in m["reason"] for m in src.missing)
  # Split 2: all five are training videos.
  src2 = sources.ucf101_source(testdata_dir / "videos" / "ucf101", ucf_splits, split=2)
  assert collections.Counter(i.split for i in src2.items) == {"train": 5}


def test_missing_split_file_names_the_expected_path(tmp_path, ucf_splits, testdata_dir):
  (tmp_path / "classInd.txt").write_bytes((ucf_splits / "classInd.txt").read_bytes())
  (tmp_path / "trainlist01.txt").write_bytes((ucf_splits / "trainlist01.txt").read_bytes())
  with pytest.raises(sources.SourceError, match=re.escape(str(tmp_path / "testlist01.txt"))):
    sources.ucf101_source(testdata_dir / "videos" / "ucf101", tmp_path, split=1)
  with pytest.raises(sources.SourceError, match=re.escape(str(tmp_path / "nowhere"))):
    sources.ucf101_source(tmp_path / "nowhere", ucf_splits, split=1)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(sources.SourceError, match=re.escape(str(empty / "classInd.txt"))):
    sources.ucf101_source(testdata_dir / "videos", empty, split=1)
  with pytest.raises(sources.SourceError, match="split must be one of"):
    sources.ucf101_source(testdata_dir / "videos", ucf_splits, split=4)


def test_malformed_lines_name_the_file(tmp_path, ucf_splits):
  classes = sources.read_ucf101_classes(ucf_splits)
  bad = tmp_path / "trainlist01.txt"
  bad.write_text("Archery/v_Archery_g01_c01.avi 5\r\n")  # Archery is 3, not 5
  with pytest.raises(sources.SourceError, match=re.escape(str(bad)) + ".*index 5"):
    sources.read_ucf101_list(bad, classes, "train")
  bad.write_text("Nope/v_Nope_g01_c01.avi 1\r\n")
  with pytest.raises(sources.SourceError, match="'Nope'"):
    sources.read_ucf101_list(bad, classes, "train")
  hmdb = tmp_path / "x_test_split1.txt"
  hmdb.write_text("a.avi 3 \n")
  with pytest.raises(sources.SourceError, match=re.escape(str(hmdb))):
    sources.read_hmdb51_split_file(hmdb)


@pytest.mark.parametrize("split", ["1", "2", "3"])
def test_hmdb51_split_files_exact_counts(hmdb_splits, split):
  classes = sources.hmdb51_classes(hmdb_splits, int(split))
  assert len(classes) == HMDB51_NUM_CLASSES
  counts = collections.Counter()
  for name in classes:
    path = hmdb_splits / f"{name}_test_split{split}.txt"
    assert _raw_lines(path)[0].endswith(b" ")  # the trailing space of the official files
    entries = sources.read_hmdb51_split_file(path)
    counts.update(flag for _, flag in entries)
    per_class = collections.Counter(flag for _, flag in entries)
    assert (per_class["1"], per_class["2"]) == (70, 30)
  assert dict(counts) == HMDB51_PER_SPLIT


def test_hmdb51_classes_sorted_not_class_list_order(hmdb_splits, testdata_dir):
  classes = sources.hmdb51_classes(hmdb_splits, 1)
  mm = (testdata_dir / "label_maps" / "hmdb51_label_map_mmaction2.txt").read_text().split()
  assert classes == mm == sorted(classes)
  official = [l.strip() for l in (hmdb_splits / "class_list.txt").read_text().splitlines()]
  assert official != classes and sorted(official) == classes  # same set, different order
  assert classes.index("kick") < classes.index("kick_ball")


def test_hmdb51_source_flags_and_torchvision_prefix(hmdb_splits, testdata_dir):
  videos = testdata_dir / "videos" / "hmdb51"
  expected = {  # README table: split → flag per clip (0 = unused → not an item)
      1: {"RATRACE_wave_f_nm_np1_fr_goo_37": "train", "TrumanShow_wave_f_nm_np1_fr_med_26": "test",
          "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6": "train"},
      3: {"RATRACE_wave_f_nm_np1_fr_goo_37": "train", "TrumanShow_wave_f_nm_np1_fr_med_26": "train",
          "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0": "train",
          "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6": "test"},
  }
  for split, want in expected.items():
    src = sources.hmdb51_source(videos, hmdb_splits, split)
    assert {i.video_id: i.split for i in src.items} == want
    assert src.info["unused"] == HMDB51_PER_SPLIT["0"]
    assert len(src.items) + len(src.missing) == HMDB51_PER_SPLIT["1"] + HMDB51_PER_SPLIT["2"]
    for item in src.items:
      assert src.classes[item.label] == ("cartwheel" if "cartwheel" in item.video_id else "wave")
  cartwheel = [i for i in src.items if "cartwheel" in i.video_id][0]
  assert cartwheel.path.endswith("hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi")


def test_list_source_int_and_name_labels(tmp_path, testdata_dir):
  v = testdata_dir / "videos" / "ucf101"
  listing = tmp_path / "list.txt"
  listing.write_text(f"{v}/v_Archery_g01_c01.avi 2\r\nv_Basketball_g01_c01.avi 0\n"
                     "absent.avi 1 \n")
  src = sources.list_source(v, listing)
  assert [(i.video_id, i.label, i.split) for i in src.items] == [
      ("v_Archery_g01_c01", 2, "all"), ("v_Basketball_g01_c01", 0, "all")]
  assert src.classes == ("0", "1", "2")
  assert [m["path"] for m in src.missing] == [str(v / "absent.avi")]
  listing.write_text("v_Archery_g01_c01.avi shoot\nv_Basketball_g01_c01.avi ball\n")
  src = sources.list_source(v, listing)
  assert src.classes == ("ball", "shoot")
  assert [i.label for i in src.items] == [1, 0]
  with pytest.raises(sources.SourceError, match=re.escape(str(tmp_path / "nolist.txt"))):
    sources.list_source(v, tmp_path / "nolist.txt")


def test_tfds_source_with_mock_data_no_network():
  tfds = pytest.importorskip("tensorflow_datasets")
  num_examples = 3
  with tfds.testing.mock_data(num_examples=num_examples):
    src = sources.tfds_source("ucf101", ("train", "test"))
    reference = [int(ex["label"]) for ex in
                 tfds.load("ucf101", split="train", shuffle_files=False).as_numpy_iterator()]
    frames = list(sources.iter_tfds_frames([i for i in src.items if i.split == "train"][1:]))
  assert len(src.classes) == 101 and src.classes[2] == "Archery"
  assert [i.video_id for i in src.items] == [f"{s}_{k:06d}" for s in ("train", "test")
                                             for k in range(num_examples)]
  assert [i.label for i in src.items if i.split == "train"] == reference
  assert [item.video_id for item, _ in frames] == ["train_000001", "train_000002"]
  assert all(len(f) > 1 and f[0][:2] == b"\xff\xd8" for _, f in frames)  # JPEG frames


def test_tfds_unprepared_dataset_is_a_clear_error(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(sources.SourceError, match=re.escape(str(tmp_path)) + ".*never downloads"):
    sources.tfds_source("ucf101", data_dir=str(tmp_path))
