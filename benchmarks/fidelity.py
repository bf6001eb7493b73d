r"""Fidelity: a seeded miniature of the paper's Tables 1-3 and the two-stream fusion.

    python -m benchmarks.fidelity --out=DIR [--videos=DIR --splits=DIR [--boxes=FILE]]
        [--seeds=3] [--rows=baseline,tsn3,tam_ts3x3_3x1,sam_cnn3,sta_ts3x3_3x1] [--quick]
        [--validation] [--steps=N] [--san_steps=N] [--crop_size=96] [--jobs=N] [--report]

Does the implementation LEARN, and does each attention do what the paper says? Every row is
trained from random weights with the miniature recipe of configs/demo.py (a narrow
BN-Inception; see docs/miniature.md), for the RGB and the flow stream, for several seeds, and
scored with the test protocol (25 segments, AVE and DCW top-15); RGB and flow scores are fused
with TSN's weights 1 : 1.5. Each accuracy is printed with its 95% Wilson interval and the chance
level; means are over seeds with their standard deviation.

Data: by default a synthetic set of `data_prep.synthetic` (`FIDELITY_DATASET`: 10 classes, 640
training and 100 test videos, so one video is 1 point) written under DIR; or any dataset in the
UCF101 layout (`--videos`, `--splits`; `--boxes` in the boxes.json format of data_prep.synthetic turns on
the mechanism metrics, which are null without it).

`--crop_size`: the square training / test crop in pixels (configs/demo.py CROP_SIZE, 96: the
spatial attention grid is K = crop / 32 = 3); the synthetic frames are made at
`configs.demo.frame_size(crop)` (4:3), so 128 gives K = 4 on frames of 128x170, the same scenes
at a larger scale (about 1.8x the compute of 96).

`--validation`: the test split is replaced by a validation split carved from the training
groups (data_prep.validation_split). Recipes are chosen this way; the test split is for the
final numbers only.

Mechanism metrics (sta_cnn_jax.mechanism), each beside its chance level:
  tam_precision    fraction of the snippets Algorithm 1 selects on the TRAINING videos (the
                   trained network in eval mode on the row's N x M snippets at TSN's test
                   positions) that lie in the evidence window; chance `tam_base_rate`.
  tam_probe_train_top1  AVE top-1 on those training videos (eval mode): beside the test top-1,
                   underfitting (behind on both) vs overfitting (behind on test only).
  dcw_precision    the same for DCW's top-15 test segments; chance `dcw_base_rate`.
  attention_in_box spatial attention mass inside the object's box (SAM / STA rows); chance
                   `box_area_fraction`.
  attention_static_share  share of the maps' departure from uniform that is one fixed map
                   (1: a location prior, the same map for every frame; needs no boxes).
  entropy          mean segment entropy inside / outside the evidence window.
  cell_accuracy_on_object / _off_object  the classifier applied to ONE grid cell's features:
                   top-1 on the cell holding the object's centre / on cells its box does not
                   touch (chance 1 / classes). Equal: every cell sees the object, and spatial
                   attention has nothing to gain from finding it.

Independent runs go side by side, one worker process per CPU core (sta_cnn_jax/job_pool.py);
`--report` only re-writes the report of a finished --out from its saved scores.

A run that stops (out of memory, killed) resumes where it was with the same command: finished
trainings are re-scored from their checkpoints, an unfinished one resumes from its last
checkpoint; DIR/wall_seconds.json keeps each invocation's seconds, and the report gives their
sum.

Writes DIR/results.json ({"entries": [...], one per (row, modality, seed)}, plus summaries and
the orderings of the paper, each holding or not with its per-seed differences), DIR/results.md
and DIR/figures/. Each entry keeps its per-video outcomes (`ave_correct`, `dcw_correct`: '1' /
'0' per test video in sorted video-id order; `test_videos`: a digest of those ids), so each
ordering also gets a paired test on the same videos: the videos only one of the two gets
right, pooled over seeds, and the exact McNemar p-value of those counts.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Optional, Sequence

from absl import logging
import jax
import numpy as np

from configs import base as config_base
from configs import demo as miniature
from data_prep import prepare as prepare_lib
from data_prep import synthetic
from data_prep import validation_split
from sta_cnn_jax import experiment
from sta_cnn_jax import fuse
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import job_pool
from sta_cnn_jax import mechanism
from sta_cnn_jax import metrics
from sta_cnn_jax import modalities
from sta_cnn_jax import visualize

DEFAULT_ROWS = ('baseline', 'tsn3', 'tam_ts3x3_3x1', 'sam_cnn3', 'sta_ts3x3_3x1')
STREAMS = ('rgb', 'flow')
FUSION = experiment.FUSION
# The default data set: 10 classes x (10 test + 64 train) videos of 48 frames. With 24 training
# videos a class the miniature memorised them (RGB baseline 10-20% on validation); with 56 it
# reached 36% (docs/miniature.md).
FIDELITY_DATASET = dict(num_classes=10, videos_per_class=74, test_per_class=10, frames=48)
# --validation: the last groups of each class's training videos (2 x 4 clips) are held out.
VALIDATION_GROUPS_PER_CLASS = 2
# --quick: one seed, this many training steps a run and SAN pre-training steps (the recipe:
# configs/demo.py SCHEDULE, 600; san_pretrain, 200). A smoke run, not evidence: at 300 steps
# (half the recipe) it took 20.1 min on 2 cores (2026-12-02), of which ~1100 of 2108 core-seconds
# were fixed per run (compiles, PreciseBN, scoring) and each step of the ten runs together cost
# ~3.4 core-seconds; 100 steps fit the 15 minutes asked for.
QUICK_STEPS = 100
QUICK_SAN_STEPS = 100
FIGURE_VIDEOS = 3
# Seconds of each invocation on one --out (a resumed run has several), by its start time.
WALL_FILE = 'wall_seconds.json'
# BN-Inception's output stride: the attention grid of a crop of c px is K = c / 32.
CROP_PER_CELL = 32
ORDERING_METHOD = 'dcw'   # rows are compared on the paper's test-time method (Eq. 11)


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace) -> dict:
  """Videos -> (validation split) -> shards. Returns {'shards', 'boxes' (or None), 'classes'}."""
  videos, splits, boxes = args.videos, args.splits, args.boxes
  if not videos:
    root = os.path.join(args.out, 'synthetic')
    if not os.path.isfile(os.path.join(root, synthetic.BOXES_FILE)):
      logging.info('writing the synthetic data set to %s', root)
      frame_h, frame_w = miniature.frame_size(args.crop_size)
      synthetic.generate(root, size=(frame_w, frame_h), seed=args.data_seed,
                         object_fraction=miniature.OBJECT_FRACTION,
                         evidence_fraction=miniature.EVIDENCE_FRACTION, **FIDELITY_DATASET)
    videos = os.path.join(root, synthetic.VIDEOS_DIR)
    splits = os.path.join(root, synthetic.SPLITS_DIR)
    boxes = boxes or os.path.join(root, synthetic.BOXES_FILE)
  elif not splits:
    raise ValueError('--videos needs --splits (a UCF101-layout split folder)')
  name = 'shards'
  if args.validation:
    carved = os.path.join(args.out, 'splits_validation')
    validation_split.write_validation_split(splits, carved,
                                            groups_per_class=VALIDATION_GROUPS_PER_CLASS)
    splits, name = carved, 'shards_validation'
  shards = os.path.join(args.out, name)
  if not os.path.isfile(os.path.join(shards, input_pipeline.MANIFEST_NAME)):
    frame_h, frame_w = miniature.frame_size(args.crop_size)
    prepare_lib.prepare(prepare_lib.PrepareOptions(
        out=shards, dataset='ucf101', videos=videos, splits=splits, split=1,
        modalities=STREAMS, flow=miniature.FLOW_METHOD, frame_width=frame_w,
        frame_height=frame_h, workers=os.cpu_count() or 1))
  info = input_pipeline.dataset_info(shards)
  expected = miniature.frame_size(args.crop_size)
  if info['frame_size'] and tuple(info['frame_size']) != expected:
    raise ValueError(
        f'fidelity.py: {os.path.join(shards, input_pipeline.MANIFEST_NAME)} holds frames of '
        f'{tuple(info["frame_size"])} (H, W), prepared for another --crop_size; '
        f'--crop_size={args.crop_size} needs {expected}: pass the crop this --out was made with, '
        f'or use another --out')
  return {'shards': shards, 'boxes': boxes, 'classes': info['classes']}


# ---------------------------------------------------------------------------------------------
# Summaries.
# ---------------------------------------------------------------------------------------------

METRIC_KEYS = ('ave_top1', 'dcw_top1', 'tam_precision', 'tam_base_rate', 'tam_best_precision',
               'tam_probe_train_top1',
               'dcw_precision', 'dcw_base_rate', 'dcw_best_precision', 'attention_in_box',
               'box_area_fraction', 'attention_static_share', 'entropy_in_window',
               'entropy_outside_window', 'cell_accuracy_on_object', 'cell_accuracy_off_object')


def _select(entries, row=None, modality=None):
  return [e for e in entries if (row is None or e['row'] == row) and
          (modality is None or e['modality'] == modality)]


def summarize(entries: Sequence[dict]) -> list[dict]:
  """Mean / std over seeds of every metric per (row, modality), plus the pooled 95% interval
  of each accuracy (all seeds' test videos together)."""
  out = []
  keys = sorted({(e['row'], e['modality']) for e in entries},
                key=lambda k: (k[1] != 'rgb', k[1] != 'flow', k[0]))
  for row, modality in keys:
    group = _select(entries, row, modality)
    s = {'row': row, 'modality': modality, 'seeds': len(group),
         'chance': group[0]['chance'], 'num_test_videos': group[0]['num_test_videos']}
    for key in METRIC_KEYS:
      values = [e[key] for e in group if e.get(key) is not None]
      s[key] = {'mean': float(np.mean(values)), 'std': float(np.std(values))} if values else None
    for method in ('ave', 'dcw'):
      correct = sum(int(round(e[f'{method}_top1'] * e['num_test_videos'])) for e in group)
      total = sum(e['num_test_videos'] for e in group)
      s[f'{method}_top1_interval95'] = list(metrics.wilson_interval(correct, total))
    out.append(s)
  return out


def _paired(ea: dict, eb: dict, a_metric: str, b_metric: str) -> Optional[tuple[int, int]]:
  """(videos only a gets right, videos only b gets right) of one seed's two entries, from
  their per-video outcomes; None where either lacks them or they cover other videos."""
  key = lambda metric: metric.replace('_top1', '_correct')
  ca, cb = ea.get(key(a_metric)), eb.get(key(b_metric))
  if ca is None or cb is None or ea.get('test_videos') != eb.get('test_videos'):
    return None
  return metrics.discordant_pairs(ca, cb)


def _difference(entries, a: tuple[str, str, str], b: tuple[str, str, str]) -> Optional[dict]:
  """Per-seed differences of metric a - metric b, each given as (row, modality, metric), and
  the paired test of the two on the same test videos, all seeds pooled: `videos_won` (only a
  right), `videos_lost` (only b right), `mcnemar_p` (None without per-video outcomes)."""
  diffs, pairs = [], []
  for ea in _select(entries, a[0], a[1]):
    eb = [e for e in _select(entries, b[0], b[1]) if e['seed'] == ea['seed']]
    if eb:
      diffs.append(ea[a[2]] - eb[0][b[2]])
      pairs.append(_paired(ea, eb[0], a[2], b[2]))
  if not diffs:
    return None
  paired = {'videos_won': None, 'videos_lost': None, 'mcnemar_p': None}
  if all(p is not None for p in pairs):
    paired = metrics.paired_test(*(sum(p[i] for p in pairs) for i in (0, 1)))
  return {'mean': float(np.mean(diffs)), 'std': float(np.std(diffs)),
          'per_seed': [round(d, 4) for d in diffs], **paired}


def orderings(entries: Sequence[dict], rows: Sequence[str]) -> list[dict]:
  """The paper's orderings, each holding (mean difference over seeds > 0; DCW >= AVE: >= 0)
  or not, with the per-seed differences (positive = the paper's direction)."""
  m = f'{ORDERING_METHOD}_top1'
  checks = []
  def add(claim, a, b, strict=True):
    d = _difference(entries, a, b)
    if d is not None:
      holds = d['mean'] > 0 if strict else d['mean'] >= 0
      checks.append({'claim': claim, 'holds': bool(holds), **d})
  for mod in STREAMS + (FUSION,):
    if 'tam_ts3x3_3x1' in rows:
      for ref in ('tsn3', 'baseline'):
        if ref in rows:
          add(f'{mod}: TAM-TS(3x3,3x1) > {ref}', ('tam_ts3x3_3x1', mod, m), (ref, mod, m))
    if 'sam_cnn3' in rows:
      for ref in ('baseline', 'tsn3'):
        if ref in rows:
          add(f'{mod}: SAM-CNN3 > {ref}', ('sam_cnn3', mod, m), (ref, mod, m))
    if 'sta_ts3x3_3x1' in rows:
      for ref in rows:
        if ref != 'sta_ts3x3_3x1':
          add(f'{mod}: STA-TS(3x3,3x1) > {ref}', ('sta_ts3x3_3x1', mod, m), (ref, mod, m))
    for row in rows:
      add(f'{mod} {row}: DCW >= AVE', (row, mod, 'dcw_top1'), (row, mod, 'ave_top1'),
          strict=False)
  for row in rows:
    for mod in STREAMS:
      add(f'{row}: fusion > {mod}', (row, FUSION, m), (row, mod, m))
  return checks


def _fmt(stat: Optional[dict], percent: bool = True) -> str:
  if stat is None:
    return '—'
  if percent:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
  return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _static(s: dict) -> str:
  stat = s.get('attention_static_share')
  return '' if stat is None else f"; {stat['mean']:.2f}"


def _cells(s: dict) -> str:
  on, off = s.get('cell_accuracy_on_object'), s.get('cell_accuracy_off_object')
  if on is None or off is None:
    return '—'
  return f"{100 * on['mean']:.1f} / {100 * off['mean']:.1f}"


def format_markdown(summary: Sequence[dict], checks: Sequence[dict], epe: Sequence[dict],
                    header: str) -> str:
  lines = [header, '',
           '| row | stream | seeds | DCW top-1 % (mean ± std) [95% CI] | AVE top-1 % [95% CI] | '
           'chance % | TAM prec. (base; best possible) | DCW prec. (base; best possible) | '
           'attention in box (area); static share | '
           'H in / out window | cell top-1 % on / off object | train-video AVE top-1 % |',
           '|' + '---|' * 12]
  for s in summary:
    ci = lambda k: f"[{100 * s[k][0]:.1f}, {100 * s[k][1]:.1f}]"
    pair = lambda a, b, c=None: ('—' if s[a] is None else
                                 f"{_fmt(s[a], False)} ({_fmt(s[b], False)}"
                                 + (f"; {s[c]['mean']:.3f})" if c and s.get(c) else ')'))
    entropy = ('—' if s['entropy_in_window'] is None else
               f"{s['entropy_in_window']['mean']:.2f} / {s['entropy_outside_window']['mean']:.2f}")
    lines.append(f"| {s['row']} | {s['modality']} | {s['seeds']} | {_fmt(s['dcw_top1'])} "
                 f"{ci('dcw_top1_interval95')} | {_fmt(s['ave_top1'])} "
                 f"{ci('ave_top1_interval95')} | {100 * s['chance']:.1f} | "
                 f"{pair('tam_precision', 'tam_base_rate', 'tam_best_precision')} | "
                 f"{pair('dcw_precision', 'dcw_base_rate', 'dcw_best_precision')} | "
                 f"{pair('attention_in_box', 'box_area_fraction')}{_static(s)} | {entropy} | "
                 f"{_cells(s)} | {_fmt(s.get('tam_probe_train_top1'))} |")
  lines += ['', '95% CI: Wilson interval of the accuracy over all seeds\' test videos pooled. '
            'Best possible: the precision of a perfect selector of the same shape '
            '(TS(3x3,3x1) must pick a snippet in every segment, also where the evidence window '
            'does not reach; sta_cnn_jax/mechanism.py). Train-video top-1 (TAM rows): the '
            'trained network in eval mode on its own training videos (the TAM probe\'s N x M '
            'snippets): a row behind another on test AND on its training videos underfits; one '
            'behind on test only overfits.', '',
            '| ordering (paper) | holds | mean diff (pts) | std | per seed | videos won / lost '
            '| McNemar p |', '|---|---|---|---|---|---|---|']
  for c in checks:
    won_lost, p = '—', '—'
    if c.get('mcnemar_p') is not None:
      won_lost, p = f"{c['videos_won']} / {c['videos_lost']}", f"{c['mcnemar_p']:.3f}"
    lines.append(f"| {c['claim']} | {'yes' if c['holds'] else 'NO'} | {100 * c['mean']:+.1f} | "
                 f"{100 * c['std']:.1f} | {', '.join(f'{100 * d:+.1f}' for d in c['per_seed'])} | "
                 f"{won_lost} | {p} |")
  lines += ['', 'Videos won / lost: test videos (all seeds pooled) that only the first of the '
            'two gets right / only the second; McNemar p: the two-sided exact binomial test of '
            'those counts (H0: the two are equally good). p >= 0.05: these videos do not tell '
            'the two apart, whichever way the ordering came out. The seeds share their test '
            'videos, so the pooled pairs are not fully independent.']
  if epe:
    lines += ['', '| SAN pre-training seed | steps | EPE before (px) | EPE after (px) | '
              'zero-flow EPE (px) |', '|---|---|---|---|---|']
    for e in epe:
      lines.append(f"| {e['seed']} | {e['steps']} | {e['epe_before']:.3f} | {e['epe_after']:.3f} | "
                   f"{e['zero_flow_epe']:.3f} |")
  return '\n'.join(lines)


def accuracy_figure(summary: Sequence[dict], rows: Sequence[str], out: str) -> str:
  groups, errors = {}, {}
  for mod in STREAMS + (FUSION,):
    stats = {s['row']: s['dcw_top1'] for s in summary if s['modality'] == mod}
    if stats:
      groups[mod] = [stats[r]['mean'] if r in stats else 0.0 for r in rows]
      errors[mod] = [stats[r]['std'] if r in stats else 0.0 for r in rows]
  return str(visualize.plot_accuracy_bars(rows, groups, errors, summary[0]['chance'],
                                          os.path.join(out, 'figures', 'accuracy_dcw.png'),
                                          'DCW top-1, mean ± std over seeds'))


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--out', required=True, help='Output folder (data, runs, results, figures).')
  ap.add_argument('--videos', default='', help='UCF101-layout videos (default: synthetic).')
  ap.add_argument('--splits', default='', help='UCF101-layout split folder (with --videos).')
  ap.add_argument('--boxes', default='', help='boxes.json (data_prep.synthetic format; data_prep.boxes_from_meta '
                       'converts a per-video meta file of another generator).')
  ap.add_argument('--seeds', type=int, default=3, help='Training seeds 0 .. N-1.')
  ap.add_argument('--rows', default=','.join(DEFAULT_ROWS), help='Rows of configs/base.py.')
  ap.add_argument('--quick', action='store_true', help=f'One seed, {QUICK_STEPS} training and '
                  f'{QUICK_SAN_STEPS} SAN pre-training steps (a smoke run).')
  ap.add_argument('--validation', action='store_true',
                  help='Score on a validation split carved from the training groups.')
  ap.add_argument('--steps', type=int, default=0, help='Override the training steps per run.')
  ap.add_argument('--san_steps', type=int, default=0,
                  help='Override the SAN pre-training steps (0: configs/demo.py).')
  ap.add_argument('--crop_size', type=int, default=miniature.CROP_SIZE,
                  help='Square crop in pixels; synthetic frames are made at '
                       'configs.demo.frame_size(crop) (K = crop / 32).')
  ap.add_argument('--jobs', type=int, default=0,
                  help='Runs side by side, one core each (0: one per core on a CPU host, 1 on '
                       'an accelerator; sta_cnn_jax/job_pool.py).')
  ap.add_argument('--report', action='store_true',
                  help='Only re-write results.md / results.json / figures from --out\'s '
                       'results.json and saved scores (no training, no evaluation).')
  ap.add_argument('--data_seed', type=int, default=0, help='Seed of the synthetic data set.')
  return ap.parse_args(argv)


def train_all(args: argparse.Namespace, rows: Sequence[str], seeds: Sequence[int], data: dict,
              truth: Optional[dict], started: float) -> tuple[list[dict], list[dict], str]:
  """Every (row, stream, seed) run and each seed's SAN pre-training through job_pool.
  Returns (entries, SAN EPE reports, a note on how the runs were spread)."""
  steps = args.steps or (QUICK_STEPS if args.quick else 0)
  san_steps = args.san_steps or (QUICK_SAN_STEPS if args.quick else 0)
  run_configs = {(m, r, seed): miniature.run_config(m, r, data['shards'], seed, steps,
                                                   san_steps=san_steps,
                                                   crop_size=args.crop_size)
                 for seed in seeds for r in rows for m in STREAMS}
  san_configs = experiment.san_pretraining_configs(run_configs)
  jobs = experiment.experiment_jobs(
      run_configs, san_configs, {k: run_dir(args.out, k) for k in run_configs},
      {seed: os.path.join(args.out, 'san', f'seed{seed}') for seed in seeds},
      data['classes'], truth,
      {k: os.path.join(args.out, 'figures', f'{k[0]}_{k[1]}') for k in run_configs if k[2] == 0},
      FIGURE_VIDEOS)
  workers = args.jobs or job_pool.default_workers()
  print(f'{len(jobs)} runs on {workers} worker(s)', flush=True)

  def report(job, result, seconds):
    record_wall_seconds(args.out, started)
    if job.name.startswith('san'):
      print(json.dumps({'job': job.name, **result[1]}), flush=True)
    else:
      entry = result[0]
      print(json.dumps({'job': job.name, **{k: entry[k] for k in (
          'ave_top1', 'dcw_top1', 'train_seconds', 'eval_seconds')}}), flush=True)

  results = job_pool.run_jobs(
      jobs, workers, (experiment.prepare_worker, (args.out, logging.get_verbosity())), report,
      release_after_jobs=True)
  entries = experiment.collect_entries(results, rows, STREAMS, seeds, len(data['classes']))
  epe = [results[experiment.san_name(seed)][1] for seed in san_configs]
  return entries, epe, f'{len(jobs)} runs on {workers} worker process(es) (sta_cnn_jax/job_pool.py)'


def run_dir(out: str, key: experiment.RunKey) -> str:
  return os.path.join(out, 'runs', experiment.run_name(key))


def record_wall_seconds(out: str, started: float) -> dict[str, float]:
  """Records this invocation's seconds so far (it began at `started`) in out/WALL_FILE and
  returns every invocation's seconds on `out` ({start time: seconds}): a run that stopped (out
  of memory, killed) and was resumed with the same command reports the time of all its parts."""
  path = os.path.join(out, WALL_FILE)
  parts = {}
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      parts = json.load(f)
  parts[f'{started:.3f}'] = round(time.time() - started, 1)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(parts, f, indent=1)
  os.replace(path + '.tmp', path)
  return parts


def add_best_precisions(entries: Sequence[dict], out: str, shards: str,
                        truth: Optional[dict], crop_size: int = miniature.CROP_SIZE) -> None:
  """--report on a results.json written before the best-possible precisions existed: fills
  them in from each run's saved scores (its video ids) and the ground truth."""
  if truth is None:
    return
  for e in entries:
    if e['modality'] == FUSION:
      continue
    config = miniature.run_config(e['modality'], e['row'], shards, e['seed'],
                                  crop_size=crop_size)
    scores = os.path.join(run_dir(out, (e['modality'], e['row'], e['seed'])),
                          modalities.SCORES_FILE)
    if e.get('dcw_precision') is not None and e.get('dcw_best_precision') is None:
      e['dcw_best_precision'] = experiment.dcw_best_precision(
          config, np.load(scores)['video_id'].tolist(), truth)
    if e.get('tam_precision') is not None and e.get('tam_best_precision') is None:
      probe = os.path.join(os.path.dirname(scores), experiment.TAM_PROBE_DIR,
                           modalities.SCORES_FILE)
      e['tam_best_precision'] = experiment.tam_best_precision(
          config, np.load(probe)['video_id'].tolist(), truth)


def add_paired_outcomes(entries: Sequence[dict], out: str) -> None:
  """--report on a results.json written before entries kept their per-video outcomes: fills
  them in (`metrics.paired_outcomes`) from each run's saved scores, fusions from their two
  streams' (the same fusion as `experiment.fusion_entry`). Each run's scores are read once."""
  @functools.cache
  def scores(modality, row, seed):
    return fuse.load_scores(run_dir(out, (modality, row, seed)))
  for e in entries:
    if e.get('ave_correct') is not None:
      continue
    if e['modality'] == FUSION:
      fused = experiment.fusion_entry(e['row'], e['seed'],
                                      [scores(m, e['row'], e['seed']) for m in STREAMS],
                                      int(round(1 / e['chance'])), e.get('fusion_weights'))
      e.update({k: fused[k] for k in fused if k == 'test_videos' or k.endswith('_correct')})
    else:
      z = scores(e['modality'], e['row'], e['seed'])
      e.update(metrics.paired_outcomes({m: z[m] for m in fuse.METHODS}, z['label'],
                                       z['video_id']))


def main(argv: Sequence[str]) -> dict:
  args = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  command = f"python -m benchmarks.fidelity {' '.join(argv)}"
  start = time.time()
  os.makedirs(args.out, exist_ok=True)
  experiment.use_compilation_cache(args.out)  # seeds after the first skip compilation
  data = prepare_data(args)
  truth = (mechanism.load_ground_truth(data['boxes'], miniature.frame_size(args.crop_size))
           if data['boxes'] else None)
  if args.report:
    with open(os.path.join(args.out, 'results.json')) as f:
      previous = json.load(f)
    entries, epe = previous['entries'], previous['san_pretraining']
    add_best_precisions(entries, args.out, data['shards'], truth, args.crop_size)
    add_paired_outcomes(entries, args.out)
    rows = list(dict.fromkeys(e['row'] for e in entries))
    seeds = sorted({e['seed'] for e in entries})
    command, wall = previous['command'], previous['wall_seconds']
    spread = previous.get('runs', 'runs as in the first invocation')
    split = previous['split']
  else:
    rows = [r.strip() for r in args.rows.split(',') if r.strip()]
    for row in rows:
      config_base.parse_arg(row)                     # clear error for an unknown row
    seeds = list(range(1 if args.quick else args.seeds))
    entries, epe, spread = train_all(args, rows, seeds, data, truth, start)
    invocations = record_wall_seconds(args.out, start)
    wall = sum(invocations.values())
    if len(invocations) > 1:
      spread += (f'; wall time over {len(invocations)} invocations on this folder '
                 f'(this one {(time.time() - start) / 60:.1f} min)')
    split = 'validation (carved from training groups)' if args.validation else 'test'
  summary = summarize(entries)
  checks = orderings(entries, rows)
  header = (f"# Fidelity miniature ({split} split, {entries[0]['num_test_videos']} videos, "
            f"{len(data['classes'])} classes, seeds {seeds}, wall {wall / 60:.1f} min)\n\n"
            f"Command: `{command}`\n\n"
            f"Narrow BN-Inception (width x{miniature.WIDTH_MULTIPLIER}), "
            f"{args.crop_size}px crops (K = {args.crop_size // CROP_PER_CELL}), from random "
            f"weights: a miniature, not the paper's network. Rows compared on "
            f"{ORDERING_METHOD.upper()} top-1. {spread}.")
  figure = accuracy_figure(summary, rows, args.out)
  result = {'command': command, 'split': split, 'crop_size': args.crop_size,
            'wall_seconds': round(wall, 1), 'runs': spread,
            'devices': [str(d) for d in jax.devices()], 'entries': entries,
            'summary': summary, 'orderings': checks, 'san_pretraining': epe,
            'figures': [figure]}
  if args.report:
    result['report_command'] = f"python -m benchmarks.fidelity {' '.join(argv)}"
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=1)
  markdown = format_markdown(summary, checks, epe, header)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(markdown + '\n')
  print(markdown)
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
