"""One experiment = train a config, score it with the test protocol, measure its mechanisms.

Shared by the demo (`sta_cnn_jax.demo`) and the fidelity benchmark (`benchmarks/fidelity.py`):

  pretrain_san_with_epe  SAN + Expanded Part pre-training (Eq. 4) with the flow end-point
                         error of the SAN before and after, against the prepared flow.
  train_and_score        train (resumes), evaluate (25 segments, AVE + DCW), TAM / DCW precision,
                         entropy inside / outside the evidence window, attention in the box.
  fusion_entry           TSN-weighted RGB + flow fusion of two scored streams.

An entry is a flat dict: accuracies are fractions in [0, 1] with their chance level, mechanism
metrics are null where they do not apply (no ground truth, no TAM, no spatial attention).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import base as config_base
from sta_cnn_jax import augment
from sta_cnn_jax import checkpoints
from sta_cnn_jax import evaluate as evaluate_lib
from sta_cnn_jax import fuse
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import job_pool
from sta_cnn_jax import losses
from sta_cnn_jax import mechanism
from sta_cnn_jax import metrics
from sta_cnn_jax import pretrain_san
from sta_cnn_jax import train
from sta_cnn_jax import visualize

FUSION = 'fusion'
# SAN flow EPE is measured on this many training batches before / after pre-training.
EPE_BATCHES = 4
TAM_PROBE_DIR = 'tam_probe'
# Compiles shorter than this are not written to the persistent compilation cache.
CACHE_MIN_COMPILE_SECONDS = 1.0
# The cache's folder inside an experiment's output folder (demo workdir, fidelity --out).
COMPILATION_CACHE_DIR = 'jax_cache'
# Step time of an RGB row with the SAN against the same row without (configs/demo.py, one core:
# SAM-CNN3 533 ms vs TSN N=3 326 ms; STA 942 vs TAM 570).
SAN_COST_FACTOR = 1.6
# mechanism.cell_evidence's summary, kept in every run's entry.
CELL_EVIDENCE_KEYS = ('cell_accuracy_on_object', 'cell_accuracy_off_object',
                      'cell_true_prob_on_object', 'cell_true_prob_off_object')
NULL_TAM_PROBE = {'tam_precision': None, 'tam_base_rate': None, 'tam_best_precision': None,
                  'tam_probe_train_top1': None}
NULL_MECHANISM = {**NULL_TAM_PROBE,
                  'dcw_precision': None, 'dcw_base_rate': None, 'dcw_best_precision': None,
                  'entropy_in_window': None, 'entropy_outside_window': None,
                  'attention_in_box': None, 'box_area_fraction': None,
                  **{key: None for key in CELL_EVIDENCE_KEYS}}


def use_compilation_cache(out_dir: str) -> None:
  """Keeps XLA's compiled programs in `out_dir`/COMPILATION_CACHE_DIR (JAX's persistent
  compilation cache).

  Every run of one row and stream compiles the same programs (init, train step, PreciseBN,
  eval); a seed changes only their inputs. On 2 CPU cores a BN-Inception train step takes
  ~60-80 s to compile and the step itself ~0.1 s, so seeds after the first, and re-runs, start
  training at once.
  """
  directory = os.path.join(out_dir, COMPILATION_CACHE_DIR)
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', CACHE_MIN_COMPILE_SECONDS)


def prepare_worker(out_dir: str, verbosity: int) -> None:
  """A job_pool worker's set-up: the shared compilation cache and the parent's log level."""
  logging.set_verbosity(verbosity)
  use_compilation_cache(out_dir)


def run_cost(config: ml_collections.ConfigDict) -> float:
  """Relative run time of training `config` (job_pool starts the costliest first): snippets
  a step, and the SAN an RGB spatial-attention row also runs (~1.6x in the miniature)."""
  cost = float(config.num_train_steps * config.batch_size * config_base.num_snippets(config))
  if config.model.spatial_attention and config.modality == 'rgb':
    cost *= SAN_COST_FACTOR
  return cost


def san_cost(config: ml_collections.ConfigDict) -> float:
  """Relative run time of SAN pre-training (job_pool: its dependants' cost is added)."""
  p = config.san_pretrain
  return float(p.num_steps * p.batch_size * p.num_segments)


def san_epe(config: ml_collections.ConfigDict, params: Any,
            batches: int = EPE_BATCHES) -> dict[str, float]:
  """Mean end-point error (px, at the Expanded Part's resolution) of the SAN's flow against the
  prepared flow on `batches` training batches, and the EPE of predicting zero flow."""
  model = pretrain_san.create_san_model(config)
  iterator = input_pipeline.create_san_pretrain_dataset(config)

  @jax.jit
  def errors(frames, flow):
    x = input_pipeline.normalize(frames.reshape((-1,) + frames.shape[-3:]), 'rgb',
                                 config.input.mean, config.input.std, config.input.bgr)
    _, pred = model.apply({'params': params}, x)
    target = losses.resize_flow(flow.reshape((-1,) + flow.shape[-3:]), pred.shape[1:3])
    return (jnp.mean(jnp.linalg.norm(pred - target, axis=-1)),
            jnp.mean(jnp.linalg.norm(target, axis=-1)))

  values = np.array([jax.device_get(errors(b['frames'], b['flow']))
                     for b, _ in zip(iterator, range(batches))])
  return {'epe': float(values[:, 0].mean()), 'zero_flow_epe': float(values[:, 1].mean())}


def pretrain_san_with_epe(config: ml_collections.ConfigDict, workdir: str
                          ) -> tuple[str, dict[str, Any]]:
  """Pre-trains the SAN of an RGB spatial-attention config (pretrain_san.pretrain_san, resumes);
  returns (export dir for init.san_weights, {'steps', 'epe_before', 'epe_after',
  'zero_flow_epe', 'seconds'})."""
  model = pretrain_san.create_san_model(config)
  init = pretrain_san.create_san_pretrain_state(jax.random.PRNGKey(config.seed), config,
                                                model).params
  before = san_epe(config, init)
  start = time.time()
  export = pretrain_san.pretrain_san(config, workdir)
  seconds = time.time() - start
  after = san_epe(config, checkpoints.load_inference(export)[0]['params'])
  return export, {'seed': config.seed, 'steps': config.san_pretrain.num_steps,
                  'epe_before': before['epe'], 'epe_after': after['epe'],
                  'zero_flow_epe': after['zero_flow_epe'], 'seconds': round(seconds, 1)}


def _tam_groups(config: ml_collections.ConfigDict) -> Optional[int]:
  t = config.temporal
  return t.num_segments if t.snippets_per_segment > 1 else None


def tam_best_precision(config: ml_collections.ConfigDict, video_ids: Sequence[str],
                       truth: dict) -> float:
  """The TAM precision a perfect selector of the row's shape reaches on these (training)
  videos (mechanism.best_selection_precision)."""
  inside, _ = mechanism.in_window(video_ids, truth, config_base.num_snippets(config),
                                  config.modality)
  return mechanism.best_selection_precision(inside, config.temporal.top_n, _tam_groups(config))


def dcw_best_precision(config: ml_collections.ConfigDict, video_ids: Sequence[str],
                       truth: dict) -> float:
  """The DCW precision a perfect top-k of the test segments reaches on these videos."""
  num_segments = config.eval.num_segments
  inside, _ = mechanism.in_window(video_ids, truth, num_segments, config.modality)
  return mechanism.best_selection_precision(inside, min(config.eval.dcw_top_k, num_segments))


def tam_probe(config: ml_collections.ConfigDict, variables: Any, model: Any, workdir: str,
              truth: Optional[dict]) -> dict[str, Optional[float]]:
  """TAM precision on the TRAINING videos: the trained network (eval mode) scores the row's
  N x M snippets at TSN's test positions, Algorithm 1's β selects top_n (per segment), and
  the selected snippets are checked against the evidence window. Nulls without TAM / truth.

  Also `tam_probe_train_top1`: the AVE top-1 of those training videos (eval mode, N x M
  snippets). Beside the test top-1 it tells a row that fits its training videos less well
  (underfitting) from one that fits them but does not carry over (overfitting)."""
  t = config.temporal
  if t.consensus != 'tam' or truth is None:
    return dict(NULL_TAM_PROBE)
  probe = config.copy_and_resolve_references()
  probe.eval_split = config.train_split
  probe.eval.num_segments = config_base.num_snippets(config)
  segments = evaluate_lib.evaluate(probe, os.path.join(workdir, TAM_PROBE_DIR), variables,
                                   model)['segments']
  selected = mechanism.tam_selection(segments['segment_probs'], t.top_n, _tam_groups(config))
  inside, _ = mechanism.in_window(segments['video_id'], truth, probe.eval.num_segments,
                                  config.modality)
  p = mechanism.selection_precision(selected, inside)
  train_top1 = metrics.top1_accuracy(segments['segment_probs'].mean(1), segments['label'])
  return {'tam_precision': p['precision'], 'tam_base_rate': p['base_rate'],
          'tam_best_precision': tam_best_precision(config, segments['video_id'], truth),
          'tam_probe_train_top1': train_top1}


def test_mechanism(config: ml_collections.ConfigDict, segments: dict,
                   truth: Optional[dict]) -> dict[str, Any]:
  """DCW precision, entropies inside / outside the window and attention in the box on the test
  videos (`evaluate` segments); nulls without ground truth or spatial attention."""
  if truth is None:
    return {k: v for k, v in NULL_MECHANISM.items() if not k.startswith('tam_')}
  probs = segments['segment_probs']
  inside, ref = mechanism.in_window(segments['video_id'], truth, probs.shape[1], config.modality)
  p = mechanism.dcw_precision(probs, inside, config.eval.dcw_top_k)
  out = {'dcw_precision': p['precision'], 'dcw_base_rate': p['base_rate'],
         'dcw_best_precision': dcw_best_precision(config, segments['video_id'], truth),
         **mechanism.entropy_inside_outside(probs, inside),
         'attention_in_box': None, 'box_area_fraction': None}
  height, width = config.input.frame_size
  crop = config.input.crop_size
  offset = tuple(int(v) for v in augment.center_offset(height, width, crop).numpy())
  if 'cell_probs' in segments:                        # config.eval.cell_evidence
    cells = mechanism.cell_evidence(segments['video_id'], segments['cell_probs'],
                                    segments['label'], truth, ref, offset, crop)
    out.update({key: cells[key] for key in CELL_EVIDENCE_KEYS})
  else:
    out.update({key: None for key in CELL_EVIDENCE_KEYS})
  if config.model.spatial_attention:
    box = mechanism.attention_in_box(segments['video_id'], segments['attention'], truth, ref,
                                     offset, crop)
    out.update(attention_in_box=box['attention_in_box'],
               box_area_fraction=box['box_area_fraction'])
  return out


def train_and_score(config: ml_collections.ConfigDict, workdir: str, classes: Sequence[str],
                    truth: Optional[dict], figures_dir: Optional[str] = None,
                    figure_videos: int = 3, san: Optional[tuple[str, dict]] = None
                    ) -> tuple[dict, dict]:
  """Trains `config` in `workdir` (resuming), scores it; returns (entry, fusion input).

  The fusion input is {'video_id', 'label', 'ave', 'dcw'} (video-level scores, fuse.py).
  san: a `pretrain_san_with_epe` result; its export initialises the SAN (init.san_weights).
  """
  config = config.copy_and_resolve_references()
  config.eval.at_end = False
  if san is not None:
    config.init.san_weights = san[0]
  start = time.time()
  state = train.train_and_evaluate(config, workdir)
  train_seconds = time.time() - start
  model = train.create_model(config, len(classes))
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  results = evaluate_lib.evaluate(config, workdir, variables, model,
                                  keep_frames=figure_videos if figures_dir else 0)
  segments = results.pop('segments')
  scores = metrics.video_scores(segments['segment_probs'], config.eval.dcw_top_k)
  m = results['metrics']
  entry = {'row': config.row, 'row_name': config.row_name, 'modality': config.modality,
           'seed': config.seed, 'num_test_videos': int(len(segments['label'])),
           'chance': 1.0 / len(classes), 'ave_top1': m['ave']['top1'],
           'dcw_top1': m['dcw']['top1'],
           'ave_mean_class_accuracy': m['ave']['mean_class_accuracy'],
           'dcw_mean_class_accuracy': m['dcw']['mean_class_accuracy'],
           'predicted_classes': int(len(np.unique(np.argmax(scores['ave'], -1)))),
           **metrics.paired_outcomes(scores, segments['label'], segments['video_id']),
           'train_steps': config.num_train_steps, 'train_seconds': round(train_seconds, 1)}
  entry.update(tam_probe(config, variables, model, workdir, truth))
  entry.update(test_mechanism(config, segments, truth))
  entry['attention_static_share'] = (mechanism.attention_static_share(segments['attention'])
                                     if config.model.spatial_attention else None)
  entry['eval_seconds'] = round(time.time() - start - train_seconds, 1)
  if figures_dir:
    entry['figures'] = visualize.write_video_figures(
        segments, figures_dir, classes, config.eval.dcw_top_k, config.model.spatial_attention,
        figure_videos)
  return entry, {'video_id': segments['video_id'], 'label': segments['label'], **scores}


def fusion_entry(row: str, seed: int, streams: Sequence[dict], num_classes: int,
                 weights: Optional[Sequence[float]] = None) -> dict:
  """Weighted fusion (TSN weights RGB 1 : flow 1.5 by default) of one row's scored streams."""
  labels, aligned = fuse.align(streams)
  weights = list(weights or fuse.DEFAULT_WEIGHTS[:len(aligned)])
  fused = fuse.fuse_streams(aligned, weights)
  summary = metrics.summarize(fused, labels, num_classes)
  return {'row': row, 'modality': FUSION, 'seed': seed, 'num_test_videos': int(len(labels)),
          'chance': 1.0 / num_classes, 'ave_top1': summary['ave']['top1'],
          'dcw_top1': summary['dcw']['top1'],
          'ave_mean_class_accuracy': summary['ave']['mean_class_accuracy'],
          'dcw_mean_class_accuracy': summary['dcw']['mean_class_accuracy'],
          **metrics.paired_outcomes(fused, labels, aligned[0]['video_id']),
          'fusion_weights': weights, **NULL_MECHANISM, 'attention_static_share': None}


# ---------------------------------------------------------------------------------------------
# Many runs (demo, benchmarks/fidelity.py) through job_pool.
# ---------------------------------------------------------------------------------------------

RunKey = tuple[str, str, int]       # (modality, row, seed)


def run_name(key: RunKey) -> str:
  modality, row, seed = key
  return f'{modality}_{row}_seed{seed}'


def san_name(seed: int) -> str:
  return f'san_seed{seed}'


def san_pretraining_configs(run_configs: Mapping[RunKey, ml_collections.ConfigDict]
                            ) -> dict[int, ml_collections.ConfigDict]:
  """{seed: config} of the SAN pre-training each seed needs: the config of its first RGB run
  with spatial attention (none for a seed without one)."""
  out = {}
  for (modality, _, seed), config in run_configs.items():
    if modality == 'rgb' and config.model.spatial_attention:
      out.setdefault(seed, config)
  return out


def experiment_jobs(run_configs: Mapping[RunKey, ml_collections.ConfigDict],
                    san_configs: Mapping[int, ml_collections.ConfigDict],
                    run_dirs: Mapping[RunKey, str], san_dirs: Mapping[int, str],
                    classes: Sequence[str], truth: Optional[dict],
                    figure_dirs: Mapping[RunKey, str], figure_videos: int
                    ) -> list[job_pool.Job]:
  """One `train_and_score` job per run and one `pretrain_san_with_epe` job per seed in
  `san_configs`; an RGB run with spatial attention needs its seed's SAN. A SAN job costs its
  own run plus its costliest dependant, so it starts before the runs that wait for it."""
  jobs, waiting = [], {}
  for key, config in run_configs.items():
    modality, _, seed = key
    needs = {}
    if config.model.spatial_attention and modality == 'rgb':
      needs = {'san': san_name(seed)}
      waiting[seed] = max(waiting.get(seed, 0.0), run_cost(config))
    jobs.append(job_pool.Job(
        run_name(key), train_and_score,
        dict(config=config, workdir=run_dirs[key], classes=classes, truth=truth,
             figures_dir=figure_dirs.get(key), figure_videos=figure_videos),
        needs, run_cost(config)))
  for seed, config in san_configs.items():
    jobs.append(job_pool.Job(san_name(seed), pretrain_san_with_epe,
                             dict(config=config, workdir=san_dirs[seed]),
                             cost=san_cost(config) + waiting.get(seed, 0.0)))
  return jobs


def collect_entries(results: Mapping[str, Any], rows: Sequence[str], streams: Sequence[str],
                    seeds: Sequence[int], num_classes: int) -> list[dict]:
  """Entries of finished `experiment_jobs` in (seed, row, stream) order, each row's streams
  followed by their fusion."""
  entries = []
  for seed in seeds:
    for row in rows:
      scored = [results[run_name((m, row, seed))] for m in streams]
      entries += [entry for entry, _ in scored]
      fused = fusion_entry(row, seed, [scores for _, scores in scored], num_classes)
      fused['row_name'] = scored[-1][0]['row_name']
      entries.append(fused)
  return entries
