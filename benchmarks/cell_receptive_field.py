r"""How local is a grid cell of a trained miniature? Its input gradient, on its own square or not.

    python -m benchmarks.cell_receptive_field --out=DIR [--rows=sta_ts3x3_3x1,sam_cnn3]
        [--modalities=rgb,flow] [--seed=0] [--crop_size=96] [--segments=4] [--videos=40]

DIR is a finished `benchmarks.fidelity` --out (its runs/ and shards; `--crop_size` as that run
had it). For each trained run, the eval-mode network's grid features on the centre crops of
`--segments` segments of the first `--videos` videos of the scored split: the gradient of each
cell's true-class logit (the classifier on that cell's features alone, as the fidelity report's
"cell top-1") with respect to the input pixels (`evaluate.cell_logit_input_gradients`), and the
share of it on the cell's own square and on its 3x3 neighbourhood
(`mechanism.own_cell_gradient_share`), each beside its chance level (the gradient spread evenly).

Why: Weighted Spatial Pooling (Eq. 9) can only choose where to look when the cells see
different parts of the crop. The fidelity report measures that cells on and off the object tell
the class equally well; this measures why, one JSON line per run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Sequence

import jax
import numpy as np

from benchmarks import common
from benchmarks import fidelity
from configs import demo as miniature
from sta_cnn_jax import evaluate
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import mechanism
from sta_cnn_jax import train

SHARD_DIRS = ('shards_validation', 'shards')   # fidelity's --validation folder, else its test one


def shards_of(out: str) -> str:
  for name in SHARD_DIRS:
    if os.path.isdir(os.path.join(out, name)):
      return os.path.join(out, name)
  raise FileNotFoundError(f'cell_receptive_field.py: no {" or ".join(SHARD_DIRS)} in {out} '
                          '(a finished benchmarks.fidelity --out)')


def measure(out: str, modality: str, row: str, seed: int, crop_size: int, segments: int,
            videos: int) -> dict:
  """One run's own-cell and neighbourhood gradient shares (module doc)."""
  config = miniature.run_config(modality, row, shards_of(out), seed, crop_size=crop_size)
  config.eval.num_views, config.eval.num_segments = 1, segments
  state, model = train.restore_for_inference(config, fidelity.run_dir(out, (modality, row, seed)))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  kernel = state.params['acn']['fc']['kernel']
  features = lambda x: model.apply(variables, x, train=False)['features']
  gradients = jax.jit(lambda x, y: evaluate.cell_logit_input_gradients(features, kernel, x, y))
  shares, seen = [], 0
  for batch in input_pipeline.create_eval_dataset(config, num_devices=1):
    keep = batch['valid'][0]
    frames = batch['frames'][0][keep]                        # (B, S, 1, H, W, C_in)
    labels = np.repeat(batch['label'][0][keep], segments)     # one per snippet
    x = input_pipeline.normalize(frames.reshape((-1,) + frames.shape[3:]), modality,
                                 config.input.mean, config.input.std, config.input.bgr)
    shares.append(mechanism.own_cell_gradient_share(np.asarray(gradients(x, labels))))
    seen += len(frames)
    if seen >= videos:
      break
  mean = {key: float(np.mean([s[key] for s in shares])) for key in shares[0] if key != 'grid'}
  return {'bench': 'cell_receptive_field', 'row': row, 'modality': modality, 'seed': seed,
          'crop_size': crop_size, 'grid': shares[0]['grid'], 'videos': seen,
          'snippets': seen * segments, **mean}


def main(argv: Sequence[str]) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--out', required=True, help='A finished benchmarks.fidelity --out folder.')
  ap.add_argument('--rows', default='sta_ts3x3_3x1')
  ap.add_argument('--modalities', default='rgb,flow')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--crop_size', type=int, default=miniature.CROP_SIZE)
  ap.add_argument('--segments', type=int, default=4, help='Segments a video (centre crop).')
  ap.add_argument('--videos', type=int, default=40, help='Videos of the scored split.')
  a = ap.parse_args(argv)
  for row, modality in itertools.product(a.rows.split(','), a.modalities.split(',')):
    common.emit(measure(a.out, modality, row, a.seed, a.crop_size, a.segments, a.videos))


if __name__ == '__main__':
  main(sys.argv[1:])
