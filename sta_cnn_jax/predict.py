r"""Classify one raw video file with exported STA-CNN streams (paper §4.1 test protocol, Eq. 11).

  python -m sta_cnn_jax.predict --video=v_Archery_g01_c01.avi \
      --checkpoint=/runs/rgb/export,/runs/flow/export[,/runs/warp/export] [--weights=1,1.5,1] \
      [--flow=dis|tvl1|tvl1_jax] [--num_segments=25] [--num_views=10|1] [--dcw_top_k=15] \
      [--top=5] [--figures=OUT_DIR] [--classes=FILE] [--json=FILE]

Each --checkpoint is an `export_inference` directory (`--mode=export`; a workdir holding
`export/` is accepted too) of one stream. The command line over sta_cnn_jax.inference (streams,
views through the eval pipeline, AVE / DCW scores, fusion by sta_cnn_jax.fuse) and
sta_cnn_jax.predict_report (the printed table, the JSON report, the figures).
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from data_prep import flow as flow_lib
from data_prep import video as video_lib
from sta_cnn_jax import predict_report
# The library API, also reachable as predict.<name>.
from sta_cnn_jax.inference import DEFAULT_TOP, PredictError, load_stream, predict_video  # pylint: disable=unused-import
from sta_cnn_jax.video_inputs import ShardCodec  # pylint: disable=unused-import

# `--classes` files may be UCF101 classInd.txt style: "<1-based index> <name>" on every line.
_INDEXED_LINE = re.compile(r"^\d+\s+(\S.*)$")


def define_flags() -> None:
  """CLI flags; defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("video", None, "Video file to classify (any format cv2 decodes).",
                      required=True)
  flags.DEFINE_list("checkpoint", None, "Export dirs (--mode=export), one per stream.",
                    required=True)
  flags.DEFINE_list("weights", None, "Fusion weight per stream (default TSN: RGB 1, flow 1.5, "
                    "warped flow 1).")
  flags.DEFINE_enum("flow", None, sorted(flow_lib.FLOW_METHODS),
                    "Optical flow for flow streams (default: the manifest's, else dis).")
  flags.DEFINE_integer("num_segments", None, "Test segments (default config.eval: 25).")
  flags.DEFINE_integer("num_views", None, "Views per segment, 10 or 1 (default config.eval).")
  flags.DEFINE_integer("dcw_top_k", None, "Segments DCW keeps (default config.eval: 15).")
  flags.DEFINE_integer("top", DEFAULT_TOP, "Classes to print.")
  flags.DEFINE_string("figures", None, "Folder for the segment-confidence / attention PNGs.")
  flags.DEFINE_string("classes", None, "Class names file (one per line, or classInd.txt).")
  flags.DEFINE_string("json", None, "Also write the top-k and scores as JSON to this file.")


def read_class_names(path: str) -> list[str]:
  """Class names from a text file: one name per line, or UCF101 `classInd.txt` lines `1 Name`.

  Blank lines are skipped; CR (CRLF files) and surrounding spaces (HMDB51's class_list.txt) are
  stripped.
  """
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except OSError as e:
    raise PredictError(f"{path}: cannot read the class names file ({e})") from e
  names = [line.strip() for line in lines if line.strip()]
  if not names:
    raise PredictError(f"{path}: no class names (expected one name per line)")
  indexed = [_INDEXED_LINE.match(n) for n in names]
  if all(indexed):
    names = [m.group(1).strip() for m in indexed]
  return names


def parse_weights(values: Sequence[str]) -> list[float]:
  """`--weights` strings -> floats (PredictError naming the flag otherwise)."""
  try:
    return [float(v) for v in values]
  except ValueError as e:
    raise PredictError(f"--weights={','.join(values)}: expected numbers, e.g. 1,1.5,1") from e


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep Orbax's restore messages out of the report
  try:
    classes = read_class_names(f.classes) if f.classes else None
    result = predict_video(
        f.video, f.checkpoint, weights=parse_weights(f.weights) if f.weights else None,
        flow_method=f.flow, num_segments=f.num_segments, num_views=f.num_views,
        dcw_top_k=f.dcw_top_k, top=f.top, classes=classes, figures_dir=f.figures)
  except (video_lib.VideoError, PredictError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  print(predict_report.format_table(result))
  if f.json:
    with open(f.json, "w") as out:
      json.dump(predict_report.json_ready(result), out, indent=2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
