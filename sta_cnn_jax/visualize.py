r"""Figures of what STA-CNN attends to (paper Figs. 1, 2, 6, 7) as PNG files.

- `attention_overlay`: the Spatial Attention Map (Eq. 8) resized to the frame and multiplied into
  every colour channel (paper §4.5: "the resized Spatial Attention Map is used to weight each
  channel of the corresponding RGB frame"; Figs. 1, 7).
- `plot_attention_maps`: frames on top, attention-weighted frames below (Fig. 7 layout).
- `plot_segment_confidence`: discriminative confidence α = 1/H per segment (Eq. 1) along the
  video, the top-k segments β selects marked (Fig. 2).
- `plot_topn_sweep`: accuracy against top_n / top_m, DCW and AVE (Fig. 6).
- `attention_mass_in_box` / `box_area_fraction`: how much attention falls inside a box (e.g. the
  moving object of a synthetic video) and the chance level for a uniform map.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend).

Usage:
  python -m sta_cnn_jax.visualize --scores=WORKDIR/eval_scores.npz --out=FIGDIR
  python -m sta_cnn_jax.visualize --sweep=sweep.json --out=FIGDIR
`--scores`: the npz `sta_cnn_jax.evaluate` writes (video_id, label, segment_probs (V, S, C),
classes); if it also holds 'attention' (V, S, K, K) and 'frames' (V, S, H, W, C_in) uint8, the
attention maps are drawn too. `--sweep`: JSON list of {row, top, accuracy_dcw, accuracy_ave}.
"""

import json
import math
import pathlib
from typing import Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
import cv2
from matplotlib import colors
from matplotlib import patches
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from sta_cnn_jax import temporal

DPI = 100
# Attention grid: one panel per frame, PANEL_INCHES wide (height by the frame's aspect), at most
# MAX_COLUMNS a row; TITLE_INCHES above each pair of rows for the captions.
PANEL_INCHES = 2.0
TITLE_INCHES = 0.3
MAX_COLUMNS = 8
# Segment-confidence figure: inches per segment (bars, thumbnails), minimum width, bar height.
SEGMENT_INCHES = 0.5
MIN_FIGURE_INCHES = 6.0
BAR_PANEL_INCHES = 2.6
# Bar axes margins (left, right, bottom, top) in inches: y label, x label, title; gap between the
# thumbnails and the bars; title distance from the top edge.
BAR_MARGINS_INCHES = (0.8, 0.2, 0.55, 0.4)
THUMB_GAP_INCHES = 0.1
TITLE_PAD_INCHES = 0.08
# y-range above the tallest bar, as a factor, leaving room for the rotated class names.
LABEL_HEADROOM = 1.6
# Sweep figure: inches per panel (one panel per table row group, e.g. TS(9,·) and TS(3x3,3x·)).
SWEEP_PANEL_INCHES = (4.5, 3.5)
SELECTED_COLOUR = 'tab:orange'
# Coloured frame around each segment thumbnail in Fig. 2 (selected or not), as a fraction of
# the thumbnail width.
THUMB_BORDER_FRACTION = 0.06
UNSELECTED_COLOUR = 'tab:gray'
UPSAMPLE_MODES = ('nearest', 'bilinear')
SWEEP_KEYS = ('row', 'top', 'accuracy_dcw')


# ---------------------------------------------------------------------------------------------
# Attention maps on frames.
# ---------------------------------------------------------------------------------------------
def _check_map(attention: np.ndarray) -> np.ndarray:
  attention = np.asarray(attention, np.float32)
  if attention.ndim != 2:
    raise ValueError(f'visualize.py: attention map must be (K, K), got shape {attention.shape}')
  if not np.all(np.isfinite(attention)):
    raise ValueError('visualize.py: attention map holds NaN or inf')
  return attention


def upsample_attention(attention: np.ndarray, frame_hw: Tuple[int, int],
                       mode: str = 'bilinear') -> np.ndarray:
  """(K, K) map -> (H, W) float32, negatives clipped to 0.

  'bilinear': half-pixel-centred bilinear interpolation (cv2.INTER_LINEAR, edges clamped), what
  the figures show. 'nearest': each cell's value fills the pixels whose centres fall in that
  cell's footprint (mass-preserving up to pixel rounding).
  """
  attention = np.maximum(_check_map(attention), 0.0)
  height, width = int(frame_hw[0]), int(frame_hw[1])
  if mode == 'bilinear':
    return cv2.resize(attention, (width, height), interpolation=cv2.INTER_LINEAR)
  if mode == 'nearest':
    rows = np.minimum(((np.arange(height) + 0.5) * attention.shape[0] / height).astype(int),
                      attention.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * attention.shape[1] / width).astype(int),
                      attention.shape[1] - 1)
    return attention[rows][:, cols]
  raise ValueError(f'visualize.py: upsample mode {mode!r} is not one of {UPSAMPLE_MODES}')


def attention_overlay(frame_uint8: np.ndarray, attention: np.ndarray) -> np.ndarray:
  """Attention-weighted frame (paper Figs. 1, 7).

  Args:
    frame_uint8: (H, W, 3) uint8 frame.
    attention: (K, K) Spatial Attention Map (Eq. 8).

  Returns:
    (H, W, 3) uint8: frame * m, m = the map resized bilinearly to (H, W) and divided by its max
    (all black for an all-zero map).
  """
  frame = np.asarray(frame_uint8)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(f'visualize.py: frame must be (H, W, 3) uint8, got {frame.shape} '
                     f'{frame.dtype}')
  weights = upsample_attention(attention, frame.shape[:2], 'bilinear')
  peak = float(weights.max())
  weights = weights / peak if peak > 0 else np.zeros_like(weights)
  return np.clip(np.rint(frame * weights[..., None]), 0, 255).astype(np.uint8)


def _save(fig: Figure, out_path) -> pathlib.Path:
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  fig.savefig(out_path, dpi=DPI, format='png')
  return out_path


def plot_attention_maps(frames: np.ndarray, attentions: np.ndarray, out_path,
                        titles: Optional[Sequence[str]] = None) -> pathlib.Path:
  """Fig. 7 layout: each frame on top, its attention-weighted version below.

  Args:
    frames: (N, H, W, 3) uint8 (or (N, H, W, C) with C >= 3: the first 3 channels, e.g. frame t
      of an RGB snippet).
    attentions: (N, K, K) maps.
    out_path: PNG path (parent folders are created).
    titles: N captions (e.g. video id / class), optional.

  Returns:
    out_path. The image is rows * (2 * PANEL_INCHES * H / W + TITLE_INCHES) * DPI pixels high and
    columns * PANEL_INCHES * DPI wide, columns = min(N, MAX_COLUMNS), rows = ceil(N / MAX_COLUMNS).
  """
  frames = np.asarray(frames)
  attentions = np.asarray(attentions)
  if frames.ndim != 4 or frames.shape[-1] < 3:
    raise ValueError(f'visualize.py: frames must be (N, H, W, >=3), got {frames.shape}')
  if attentions.ndim != 3 or len(attentions) != len(frames):
    raise ValueError(f'visualize.py: attentions must be (N, K, K) with N = {len(frames)}, got '
                     f'{attentions.shape}')
  if titles is not None and len(titles) != len(frames):
    raise ValueError(f'visualize.py: {len(titles)} titles for {len(frames)} frames')
  count = len(frames)
  columns = min(count, MAX_COLUMNS)
  rows = math.ceil(count / MAX_COLUMNS)
  panel_height = PANEL_INCHES * frames.shape[1] / frames.shape[2]
  height = rows * (2 * panel_height + TITLE_INCHES)
  fig = Figure(figsize=(columns * PANEL_INCHES, height), dpi=DPI)
  axes = fig.subplots(2 * rows, columns, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  for i in range(count):
    row, col = 2 * (i // MAX_COLUMNS), i % MAX_COLUMNS
    frame = np.ascontiguousarray(frames[i, ..., :3]).astype(np.uint8)
    axes[row, col].imshow(frame)
    axes[row + 1, col].imshow(attention_overlay(frame, attentions[i]))
    axes[row, col].set_title(titles[i] if titles is not None else f'#{i}', fontsize=8)
  axes[0, 0].text(-0.04, 0.5, 'frame', transform=axes[0, 0].transAxes, rotation=90,
                  va='center', ha='right', fontsize=8)
  axes[1, 0].text(-0.04, 0.5, 'attention-weighted', transform=axes[1, 0].transAxes,
                  rotation=90, va='center', ha='right', fontsize=8)
  fig.subplots_adjust(left=0.03, right=0.99, top=1 - TITLE_INCHES / height, bottom=0.01,
                      wspace=0.04, hspace=TITLE_INCHES / panel_height)
  return _save(fig, out_path)


# ---------------------------------------------------------------------------------------------
# Temporal attention (Fig. 2) and top-n sweeps (Fig. 6).
# ---------------------------------------------------------------------------------------------
def _thumbnail_strip(frames: np.ndarray, selected: np.ndarray) -> np.ndarray:
  """(S, H, W, >=3) uint8 -> one (H + 2b, S * (W + 2b), 3) strip, each frame framed in the
  selected / unselected colour (b = THUMB_BORDER_FRACTION of the width, at least 1 pixel)."""
  border = max(1, int(round(frames.shape[2] * THUMB_BORDER_FRACTION)))
  tiles = []
  for frame, chosen in zip(frames, selected):
    colour = np.asarray(colors.to_rgb(SELECTED_COLOUR if chosen else UNSELECTED_COLOUR)) * 255
    tile = np.empty((frame.shape[0] + 2 * border, frame.shape[1] + 2 * border, 3), np.uint8)
    tile[...] = colour.astype(np.uint8)
    tile[border:-border, border:-border] = frame[..., :3]
    tiles.append(tile)
  return np.concatenate(tiles, axis=1)


def plot_segment_confidence(alpha: np.ndarray, selected_mask: np.ndarray, out_path,
                            class_names: Optional[Sequence[str]] = None,
                            predictions: Optional[np.ndarray] = None,
                            frames: Optional[np.ndarray] = None,
                            title: Optional[str] = None) -> pathlib.Path:
  """Fig. 2: discriminative confidence α (Eq. 1) of each segment along the video.

  Args:
    alpha: (S,) confidences α = 1/H.
    selected_mask: (S,) 1 for the segments the temporal attention keeps (β, top-k), else 0.
    out_path: PNG path.
    class_names: names for `predictions` (index -> name), optional.
    predictions: (S,) per-segment predicted class indices, written above the bars, optional.
    frames: (S, H, W, >=3) uint8 thumbnails drawn above the bars (Fig. 2 style), optional.
    title: figure title (e.g. "v_Biking_g01_c01 - label Biking, DCW Biking").

  Returns:
    out_path.
  """
  alpha = np.asarray(alpha, np.float64)
  selected = np.asarray(selected_mask).astype(bool)
  if alpha.ndim != 1 or selected.shape != alpha.shape:
    raise ValueError(f'visualize.py: alpha and selected_mask must both be (S,), got '
                     f'{alpha.shape} and {selected.shape}')
  if predictions is not None and np.shape(predictions) != alpha.shape:
    raise ValueError(f'visualize.py: predictions must be (S,) = {alpha.shape}, got '
                     f'{np.shape(predictions)}')
  if frames is not None and (np.ndim(frames) != 4 or len(frames) != len(alpha)):
    raise ValueError(f'visualize.py: frames must be (S, H, W, C) with S = {len(alpha)}, got '
                     f'{np.shape(frames)}')
  segments = len(alpha)
  width = max(MIN_FIGURE_INCHES, segments * SEGMENT_INCHES)
  left, right, bottom, top = BAR_MARGINS_INCHES
  axes_width = width - left - right
  bars_height = BAR_PANEL_INCHES - bottom - top
  strip = _thumbnail_strip(np.asarray(frames), selected) if frames is not None else None
  strip_height = axes_width * strip.shape[0] / strip.shape[1] if strip is not None else 0.0
  height = BAR_PANEL_INCHES + (strip_height + THUMB_GAP_INCHES if strip is not None else 0.0)
  fig = Figure(figsize=(width, height), dpi=DPI)
  inches = lambda x, y, w, h: (x / width, y / height, w / width, h / height)
  bars_ax = fig.add_axes(inches(left, bottom, axes_width, bars_height))
  if strip is not None:  # thumbnails above the bars, one per segment, same x scale
    strip_ax = fig.add_axes(inches(left, bottom + bars_height + THUMB_GAP_INCHES, axes_width,
                                   strip_height))
    strip_ax.imshow(strip, aspect='auto', extent=(-0.5, segments - 0.5, 1, 0))
    strip_ax.set_axis_off()
  positions = np.arange(segments)
  colours = [SELECTED_COLOUR if s else UNSELECTED_COLOUR for s in selected]
  bars_ax.bar(positions, alpha, color=colours, edgecolor='black', linewidth=0.5)
  bars_ax.set_xticks(positions, [str(s + 1) for s in positions], fontsize=7)
  bars_ax.set_xlim(-0.5, segments - 0.5)
  bars_ax.set_xlabel('segment')
  bars_ax.set_ylabel('confidence α = 1/H')
  if predictions is not None:
    for s, label in enumerate(np.asarray(predictions).astype(int)):
      name = class_names[label] if class_names is not None else str(label)
      bars_ax.text(s, alpha[s], name, rotation=90, ha='center', va='bottom', fontsize=6)
    bars_ax.set_ylim(0, alpha.max() * LABEL_HEADROOM if alpha.max() > 0 else 1.0)
  handles = [patches.Patch(color=SELECTED_COLOUR), patches.Patch(color=UNSELECTED_COLOUR)]
  bars_ax.legend(handles, [f'selected (top-{int(selected.sum())})', 'not selected'],
                 fontsize=7, loc='lower right', bbox_to_anchor=(1.0, 1.0), ncol=2,
                 frameon=False, borderaxespad=0.1)
  if title:
    fig.suptitle(title, fontsize=9, y=1 - TITLE_PAD_INCHES / height, va='top')
  return _save(fig, out_path)


def plot_topn_sweep(results: Sequence[Mapping[str, float]], out_path) -> pathlib.Path:
  """Fig. 6: accuracy against top_n (TS(N, top_n)) or top_m (TS(N×M, N×top_m)).

  Args:
    results: dicts with 'row' (the sweep, e.g. 'TS(9, top_n)'), 'top' (top_n or top_m),
      'accuracy_dcw' and optionally 'accuracy_ave'; one panel per distinct 'row', in order of
      first appearance. Accuracies as fractions (shown in %) or already in %.
    out_path: PNG path.

  Returns:
    out_path.
  """
  if not results:
    raise ValueError('visualize.py: plot_topn_sweep needs at least one result')
  groups = {}
  for i, entry in enumerate(results):
    missing = [k for k in SWEEP_KEYS if k not in entry]
    if missing:
      raise ValueError(f'visualize.py: sweep result #{i} lacks {missing} (has {sorted(entry)})')
    groups.setdefault(str(entry['row']), []).append(entry)
  values = [float(e[k]) for e in results for k in ('accuracy_dcw', 'accuracy_ave')
            if e.get(k) is not None]
  fractions = max(values) <= 1.0
  fig = Figure(figsize=(SWEEP_PANEL_INCHES[0] * len(groups), SWEEP_PANEL_INCHES[1]), dpi=DPI)
  axes = fig.subplots(1, len(groups), squeeze=False)[0]
  for index, (ax, (row, entries)) in enumerate(zip(axes, groups.items())):
    entries = sorted(entries, key=lambda e: float(e['top']))
    tops = [float(e['top']) for e in entries]
    ax.plot(tops, [float(e['accuracy_dcw']) for e in entries], 'o-', label='DCW')
    ave = [(t, float(e['accuracy_ave'])) for t, e in zip(tops, entries)
           if e.get('accuracy_ave') is not None]
    if ave:
      ax.plot(*zip(*ave), 's--', label='AVE')
    ax.set_xticks(tops)
    ax.set_xlabel('top_n / top_m')
    ax.set_ylabel('accuracy')
    if fractions:
      ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
    ax.set_title(f'({chr(ord("a") + index)}) {row}', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, out_path)


# ---------------------------------------------------------------------------------------------
# Attention mass inside a box.
# ---------------------------------------------------------------------------------------------
def _box_mask(box: Sequence[float], frame_hw: Tuple[int, int]) -> np.ndarray:
  """(H, W) bool: pixels whose centre (c + 0.5, r + 0.5) lies in [x0, x1) x [y0, y1)."""
  x0, y0, x1, y1 = (float(v) for v in box)
  height, width = int(frame_hw[0]), int(frame_hw[1])
  if not (x1 > x0 and y1 > y0):
    raise ValueError(f'visualize.py: box {tuple(box)} must be (x0, y0, x1, y1) with x1 > x0, '
                     'y1 > y0')
  cols = np.arange(width) + 0.5
  rows = np.arange(height) + 0.5
  mask = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
  if not mask.any():
    raise ValueError(f'visualize.py: box {tuple(box)} covers no pixel of a {height}x{width} frame')
  return mask


def box_area_fraction(box: Sequence[float], frame_hw: Tuple[int, int]) -> float:
  """Fraction of the frame's pixels inside `box` (x0, y0, x1, y1): the attention mass a uniform
  map puts there (chance level)."""
  return float(_box_mask(box, frame_hw).mean())


def attention_mass_in_box(attention: np.ndarray, box: Sequence[float],
                          frame_hw: Tuple[int, int], upsample: str = 'nearest') -> float:
  """Fraction of the spatial attention mass (Eq. 8 map) inside `box`, in frame pixels.

  The (K, K) map is upsampled to the frame (`upsample_attention`; 'nearest' by default: each
  cell's weight stays on its own footprint, whereas bilinear spreads a single cell's weight
  over its neighbours), then mass inside / total. A uniform map gives `box_area_fraction`.

  Args:
    attention: (K, K) non-negative map (negatives are clipped to 0).
    box: (x0, y0, x1, y1) in frame pixels, x1 / y1 exclusive.
    frame_hw: (H, W) of the frame the box refers to.
    upsample: 'nearest' or 'bilinear'.
  """
  weights = upsample_attention(attention, frame_hw, upsample)
  total = float(weights.sum())
  if total <= 0:
    raise ValueError('visualize.py: attention map has no positive mass')
  return float(weights[_box_mask(box, frame_hw)].sum() / total)


def write_video_figures(segments: Mapping[str, np.ndarray], out_dir, classes: Sequence[str],
                        dcw_top_k: int, spatial: bool, num_videos: int = 4) -> list[str]:
  """Fig. 2 (segment confidence, DCW's top-k marked) and, with spatial attention, Fig. 1/7
  (attention-weighted frames of the most confident segments) for the first test videos.

  segments: `evaluate.predict_segments` output with 'frames' kept (centre view).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  probs = segments['segment_probs']
  alpha = np.asarray(temporal.confidence_from_probs(probs))
  beta = np.asarray(temporal.temporal_attention_mask(alpha, min(dcw_top_k, probs.shape[1])))
  for v in range(min(num_videos, len(segments['frames']))):
    video_id = segments['video_id'][v]
    frames = segments['frames'][v][..., :3]                      # (S, H, W, 3): frame t
    written.append(str(plot_segment_confidence(
        alpha[v], beta[v], out_dir / f'{video_id}_confidence.png', class_names=classes,
        predictions=np.argmax(probs[v], axis=-1), frames=frames,
        title=f"{video_id} (label {classes[segments['label'][v]]})")))
    if spatial:
      chosen = np.argsort(-alpha[v], kind='stable')[:num_videos]
      written.append(str(plot_attention_maps(
          frames[chosen], segments['attention'][v][chosen], out_dir / f'{video_id}_attention.png',
          titles=[f'segment {s}' for s in chosen])))
  return written


def plot_accuracy_bars(rows: Sequence[str], groups: Mapping[str, Sequence[float]],
                       errors: Mapping[str, Sequence[float]], chance: float, out_path,
                       title: str = '') -> pathlib.Path:
  """Grouped bars: one group per row, one bar per key of `groups` (e.g. rgb / flow / fusion),
  error bars, and the chance level as a dashed line."""
  fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(len(groups), 1)
  x = np.arange(len(rows))
  for i, (name, values) in enumerate(groups.items()):
    ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width, yerr=errors.get(name),
           capsize=3, label=name)
  ax.axhline(chance, color='k', linestyle='--', linewidth=1, label=f'chance {chance:.0%}')
  ax.set_xticks(x)
  ax.set_xticklabels(rows, rotation=20, ha='right', fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel('test top-1')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, out_path)


# ---------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------
def _load_scores(path) -> dict:
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f'{path}: no such scores file')
  try:
    with np.load(path, allow_pickle=False) as data:
      scores = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: not a readable scores .npz ({e})') from e
  if 'segment_probs' not in scores or np.ndim(scores['segment_probs']) != 3:
    raise ValueError(f'{path}: needs segment_probs (V, S, C); has {sorted(scores)}')
  return scores


def figures_from_scores(scores_path, out_dir, num_videos: int = 4,
                        top_k: int = temporal.DCW_TOP_K) -> list:
  """Fig. 2 for the first `num_videos` videos of an eval scores file (+ Fig. 7 when it holds
  'attention' and 'frames'). Returns the written paths."""
  scores = _load_scores(scores_path)
  out_dir = pathlib.Path(out_dir)
  probs = scores['segment_probs'].astype(np.float32)  # (V, S, C)
  classes = [str(c) for c in scores['classes']] if 'classes' in scores else None
  alpha = np.asarray(temporal.confidence_from_probs(probs))  # (V, S)
  mask = np.asarray(temporal.temporal_attention_mask(alpha, min(top_k, probs.shape[1])))
  dcw = scores['dcw'] if 'dcw' in scores else probs.mean(axis=1)
  name = lambda c: classes[c] if classes else str(c)
  paths = []
  for v in range(min(num_videos, len(probs))):
    video = str(scores['video_id'][v]) if 'video_id' in scores else f'video{v}'
    label = f"label {name(int(scores['label'][v]))}, " if 'label' in scores else ''
    frames = None
    if 'frames' in scores and len(scores['frames']) > v and scores['frames'].ndim == 5:
      frames = scores['frames'][v]
    paths.append(plot_segment_confidence(
        alpha[v], mask[v], out_dir / f'segment_confidence_{v:03d}.png', class_names=classes,
        predictions=probs[v].argmax(-1), frames=frames,
        title=f'{video}: {label}DCW {name(int(np.argmax(dcw[v])))}'))
    if frames is not None and 'attention' in scores and frames.shape[-1] >= 3:
      paths.append(plot_attention_maps(frames, scores['attention'][v],
                                       out_dir / f'attention_{v:03d}.png',
                                       titles=[f'segment {s + 1}' for s in range(len(frames))]))
  return paths


def define_flags() -> None:
  """CLI flags, defined only when run as a program (importers keep their own flags)."""
  flags.DEFINE_string('scores', None, 'eval_scores.npz written by sta_cnn_jax.evaluate.')
  flags.DEFINE_string('sweep', None, 'JSON list of {row, top, accuracy_dcw, accuracy_ave}.')
  flags.DEFINE_string('out', None, 'Output folder for the PNG figures.')
  flags.DEFINE_integer('num_videos', 4, 'Videos of --scores to draw.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.out or not (f.scores or f.sweep):
    raise app.UsageError('give --out and at least one of --scores, --sweep')
  paths = []
  try:
    if f.scores:
      paths += figures_from_scores(f.scores, f.out, f.num_videos)
    if f.sweep:
      results = json.loads(pathlib.Path(f.sweep).read_text())
      paths.append(plot_topn_sweep(results, pathlib.Path(f.out) / 'topn_sweep.png'))
  except (ValueError, OSError) as e:
    raise SystemExit(f'error: {e}') from None
  for path in paths:
    print(path)


if __name__ == '__main__':
  define_flags()
  app.run(main)
