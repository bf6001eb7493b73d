"""Is the attention working? Mechanism metrics against a dataset's ground truth.

Ground truth (data_prep.synthetic's `boxes.json`): per video the evidence window
`[start, stop)` (the frames that show the class's object) and the object's box in each frame.
Every metric comes with its chance level, the value an attention that ignores the evidence
would get:

  TAM precision       fraction of the snippets Algorithm 1 selects (β = 1) on training videos
                      that lie in the evidence window; chance = the window's base rate among
                      all candidate snippets.
  DCW precision       the same for Eq. 11's top-k test segments; chance = base rate of the
                      25 test segments.
  attention in box    spatial attention mass (Eq. 8's map, upsampled to the crop) inside the
                      object's box; chance = the box's area fraction of the crop.
  segment entropy     mean entropy H (Eq. 1) of test segments inside vs outside the window
                      (the TAM premise: evidence makes the network confident, H low).

Without ground truth: the static share of the spatial maps (`attention_static_share`), how much
of the maps' departure from uniform is one fixed map, the same for every frame: 1 = a location
prior that ignores the content (it cannot follow a moving object), 0 = no preferred location.

A selection's precision is also capped by the data: TS(N×M, N×top_m) picks top_m snippets in
EVERY segment, also in segments the window does not reach. `best_selection_precision` is the
precision of a perfect selector of the same shape (the ceiling beside each precision).

A snippet's reference frame (the frame whose content it stands for): RGB, its first frame
(the one the ACN sees); flow, the first frame of its middle field (fields t .. t+4 span frames
t .. t+5). It lies in the window when start <= frame < stop.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from sta_cnn_jax import sampling
from sta_cnn_jax import temporal
from sta_cnn_jax import visualize

# Box files: data_prep.synthetic.BOXES_FILE format.
VIDEOS_KEY = 'videos'


def load_ground_truth(path: str, frame_size: Optional[tuple[int, int]] = None) -> dict:
  """{video_id: {'window': (start, stop), 'boxes': [box | None per frame], 'num_frames'}} from a
  boxes.json; with frame_size (H, W) the boxes are rescaled to the prepared frames."""
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  if VIDEOS_KEY not in data or 'frame_size' not in data:
    raise ValueError(f'{path}: not a boxes file (needs "frame_size" and "videos", the format of '
                     'data_prep.synthetic\'s boxes.json)')
  src_h, src_w = data['frame_size']
  sy, sx = (1.0, 1.0) if frame_size is None else (frame_size[0] / src_h, frame_size[1] / src_w)
  out = {}
  for vid, entry in data[VIDEOS_KEY].items():
    boxes = [None if b is None else [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy]
             for b in entry['boxes']]
    out[vid] = {'window': tuple(entry['evidence_frames']), 'boxes': boxes,
                'num_frames': len(boxes)}
  return out


def reference_frames(num_frames: int, num_snippets: int, modality: str) -> np.ndarray:
  """(S,) reference frame of each test-sampled snippet (TSN test offsets) of a video of
  `num_frames` frames (see module doc)."""
  if modality == 'rgb':
    offsets = sampling.test_offsets(num_frames, num_snippets, sampling.RGB_NEW_LENGTH)
    return np.asarray(offsets)
  fields = max(num_frames - 1, 1)   # data_prep writes n - 1 flow fields
  offsets = np.asarray(sampling.test_offsets(fields, num_snippets, sampling.FLOW_NEW_LENGTH))
  return np.minimum(offsets + sampling.FLOW_FRAMES_PER_SNIPPET // 2, num_frames - 1)


def in_window(video_ids: Sequence[str], truth: Mapping[str, dict], num_snippets: int,
              modality: str) -> tuple[np.ndarray, np.ndarray]:
  """(V, S) bool: does snippet s of video v lie in v's evidence window; (V, S) ref frames."""
  inside, frames = [], []
  for vid in video_ids:
    entry = truth[vid]
    ref = reference_frames(entry['num_frames'], num_snippets, modality)
    start, stop = entry['window']
    inside.append((ref >= start) & (ref < stop))
    frames.append(ref)
  return np.stack(inside), np.stack(frames)


def selection_precision(selected: np.ndarray, inside: np.ndarray) -> dict[str, float]:
  """{'precision': P(in window | selected), 'base_rate': P(in window)} over (V, S) masks."""
  selected = np.asarray(selected, bool)
  return {'precision': float(inside[selected].mean()) if selected.any() else float('nan'),
          'base_rate': float(inside.mean())}


def dcw_precision(segment_probs: np.ndarray, inside: np.ndarray, top_k: int) -> dict[str, float]:
  """Precision of Eq. 11's β (top-k α = 1/H per video) against the evidence window."""
  alpha = np.asarray(temporal.confidence_from_probs(segment_probs))
  beta = np.asarray(temporal.temporal_attention_mask(alpha, min(top_k, alpha.shape[1])))
  return selection_precision(beta > 0, inside)


def best_selection_precision(inside: np.ndarray, top_n: int,
                             num_segments: Optional[int] = None) -> float:
  """The highest precision a selection of Algorithm 1's shape can reach on (V, S) `inside`:
  top_n of all S snippets, or top_n in each of `num_segments` equal groups, every pick inside
  the window where the group has enough snippets inside."""
  inside = np.asarray(inside, bool)
  groups = inside.reshape(inside.shape[0], num_segments or 1, -1)
  if top_n > groups.shape[-1]:
    raise ValueError(f'mechanism.py: top_n={top_n} of {groups.shape[-1]} snippets a group')
  return float(np.minimum(groups.sum(-1), top_n).mean() / top_n)


def tam_selection(segment_probs: np.ndarray, top_n: int, num_segments: Optional[int]
                  ) -> np.ndarray:
  """(V, S) β of Algorithm 1 from per-snippet probabilities: top_n by α = 1/H overall, or
  top_m inside each of `num_segments` groups (TS(N×M, N×top_m))."""
  alpha = np.asarray(temporal.confidence_from_probs(segment_probs))
  return np.asarray(temporal.temporal_attention_mask(alpha, top_n, num_segments=num_segments)) > 0


def entropy_inside_outside(segment_probs: np.ndarray, inside: np.ndarray) -> dict[str, float]:
  """Mean segment entropy H (Eq. 1) inside / outside the evidence window."""
  p = np.clip(np.asarray(segment_probs, np.float64), 1e-12, 1.0)
  entropy = -np.sum(p * np.log(p), axis=-1)                                  # (V, S)
  mean = lambda m: float(entropy[m].mean()) if m.any() else float('nan')
  return {'entropy_in_window': mean(inside), 'entropy_outside_window': mean(~inside)}


def clip_box(box: Sequence[float], size: tuple[int, int]) -> Optional[list[float]]:
  """box [x0, y0, x1, y1] clipped to a (H, W) crop, or None when less than a pixel remains."""
  h, w = size
  clipped = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], w), min(box[3], h)]
  return clipped if clipped[2] - clipped[0] >= 1 and clipped[3] - clipped[1] >= 1 else None


def boxes_in_crop(video_ids: Sequence[str], truth: Mapping[str, dict], ref_frames: np.ndarray,
                  crop_offset: tuple[int, int], crop_size: int
                  ) -> Iterator[tuple[int, int, list[float]]]:
  """(video index, segment index, box in crop pixels) for every (video, segment) whose
  reference frame shows the object inside the crop at crop_offset (dy, dx)."""
  dy, dx = crop_offset
  for v, vid in enumerate(video_ids):
    for s, frame in enumerate(ref_frames[v]):
      box = truth[vid]['boxes'][int(frame)]
      if box is None:
        continue
      clipped = clip_box([box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy],
                         (crop_size, crop_size))
      if clipped is not None:          # else the object is outside the crop
        yield v, s, clipped


def attention_in_box(video_ids: Sequence[str], attention: np.ndarray, truth: Mapping[str, dict],
                     ref_frames: np.ndarray, crop_offset: tuple[int, int], crop_size: int
                     ) -> dict[str, Any]:
  """Mean attention mass inside the object's box over every (video, segment) whose reference
  frame shows the object inside the crop, and the mean box area fraction (chance).

  attention: (V, S, K, K) maps of the crop at crop_offset (dy, dx) of the prepared frame.
  """
  size = (crop_size, crop_size)
  mass, area = [], []
  for v, s, box in boxes_in_crop(video_ids, truth, ref_frames, crop_offset, crop_size):
    mass.append(visualize.attention_mass_in_box(attention[v, s], box, size))
    area.append(visualize.box_area_fraction(box, size))
  return {'attention_in_box': float(np.mean(mass)) if mass else None,
          'box_area_fraction': float(np.mean(area)) if area else None,
          'num_segments_with_object': len(mass)}


def attention_static_share(attention: np.ndarray) -> Optional[float]:
  """Share of the maps' squared departure from uniform that their mean map explains.

  attention: (..., K, K) maps (each sums to 1), e.g. (V, S, K, K) of the test segments. With u
  the uniform map and ā the mean map,  Σ_i |a_i − u|² = N |ā − u|² + Σ_i |a_i − ā|², so
  share = N |ā − u|² / Σ_i |a_i − u|² in [0, 1]: 1 when every map is ā (content ignored), 0 when
  the maps vary around uniform. None when every map is uniform (nothing to share).
  """
  maps = np.asarray(attention, np.float64)
  maps = maps.reshape((-1, maps.shape[-2] * maps.shape[-1]))
  deviation = maps - 1.0 / maps.shape[1]
  total = float(np.sum(deviation ** 2))
  if total <= 0.0:
    return None
  return float(maps.shape[0] * np.sum(np.mean(deviation, axis=0) ** 2) / total)


def cell_evidence(video_ids: Sequence[str], cell_probs: np.ndarray, labels: np.ndarray,
                  truth: Mapping[str, dict], ref_frames: np.ndarray,
                  crop_offset: tuple[int, int], crop_size: int) -> dict[str, Any]:
  """Does WHERE matter to this network? The classifier applied to one grid cell's features at
  a time (`evaluate.eval_step`'s 'cell_probs'), on the cell that holds the object's centre and
  on the cells its box does not touch, over every (video, segment) whose reference frame shows
  the object inside the crop.

  Spatial attention (Eq. 8-9) can only help when the cells on the object tell the class better
  than the others. When the cells off the object are as accurate (every cell's receptive field
  covers the object), Weighted Spatial Pooling has nothing to gain from moving its mass there.

  cell_probs: (V, S, K, K, C) of the crop at crop_offset (dy, dx); labels: (V,).
  Returns top-1 accuracy and mean true-class probability on / off the object (chance: 1 / C),
  and the number of (segment, cell) pairs behind each.
  """
  k = cell_probs.shape[2]
  cell = crop_size / k                                            # cell side in crop pixels
  on_hit, on_prob, off_hit, off_prob = [], [], [], []
  for v, s, (x0, y0, x1, y1) in boxes_in_crop(video_ids, truth, ref_frames, crop_offset,
                                              crop_size):
    label = int(labels[v])
    centre = (min(int((y0 + y1) / 2 // cell), k - 1), min(int((x0 + x1) / 2 // cell), k - 1))
    probs = cell_probs[v, s]                                      # (K, K, C)
    for i in range(k):
      for j in range(k):
        touches = j * cell < x1 and x0 < (j + 1) * cell and i * cell < y1 and y0 < (i + 1) * cell
        hit, prob = float(np.argmax(probs[i, j]) == label), float(probs[i, j, label])
        if (i, j) == centre:
          on_hit.append(hit)
          on_prob.append(prob)
        elif not touches:
          off_hit.append(hit)
          off_prob.append(prob)
  mean = lambda x: float(np.mean(x)) if x else None
  return {'cell_accuracy_on_object': mean(on_hit), 'cell_accuracy_off_object': mean(off_hit),
          'cell_true_prob_on_object': mean(on_prob), 'cell_true_prob_off_object': mean(off_prob),
          'cell_pairs_on_object': len(on_hit), 'cell_pairs_off_object': len(off_hit)}


def own_cell_gradient_share(grads: np.ndarray) -> dict[str, float]:
  """How local is what a grid cell says? Share of a cell's input-gradient mass on its own pixels.

  grads: (N, K, K, H, W) non-negative, |d (cell (i, j)'s output) / d (input pixel)| summed over
  the input's channels (`evaluate.cell_logit_input_gradients`), for N inputs of H x W (H, W
  multiples of K). For every cell, the gradient mass inside its own H/K x W/K square, and inside
  the squares of the cells around it (Chebyshev distance <= 1, itself included), over its whole
  gradient; means over inputs and cells. Chance (the gradient spread evenly over the input, as
  when every cell pools the whole crop): 1 / K² and the neighbourhood's share of the area.
  Near 1: a cell sees its own square (Weighted Spatial Pooling can choose WHERE to look); near
  chance: every cell sees the whole crop, and moving attention between cells changes little.
  """
  n, k, _, h, w = grads.shape
  ch, cw = h // k, w // k
  g = np.asarray(grads, np.float64).reshape(n, k, k, k, ch, k, cw).sum(axis=(4, 6))
  total = g.sum(axis=(3, 4))                                   # (N, K, K): each cell's mass
  own, near, near_area = [], [], []
  for i in range(k):
    for j in range(k):
      rows, cols = slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2)
      own.append(g[:, i, j, i, j] / total[:, i, j])
      near.append(g[:, i, j, rows, cols].sum(axis=(1, 2)) / total[:, i, j])
      near_area.append(g[0, i, j, rows, cols].size / k ** 2)
  return {'grid': k, 'own_cell_share': float(np.mean(own)), 'own_cell_chance': 1.0 / k ** 2,
          'neighbourhood_share': float(np.mean(near)),
          'neighbourhood_chance': float(np.mean(near_area))}
