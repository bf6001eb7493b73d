"""Mechanism metrics (sta_cnn_jax.mechanism) and accuracy intervals (metrics.wilson_interval)
against independent NumPy computations and closed forms."""

import json
import math

import numpy as np
import pytest

from sta_cnn_jax import mechanism
from sta_cnn_jax import metrics


def test_wilson_interval_matches_the_closed_form():
  z = 1.959963984540054
  for correct, total in ((0, 10), (5, 10), (10, 10), (37, 100), (1, 3)):
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total ** 2))
    low, high = metrics.wilson_interval(correct, total)
    assert low == pytest.approx(max(centre - half, 0), abs=1e-12)
    assert high == pytest.approx(min(centre + half, 1), abs=1e-12)
    assert 0 <= low <= p <= high <= 1
  # Known value: 50/100 -> [40.4%, 59.6%].
  low, high = metrics.wilson_interval(50, 100)
  assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
  assert metrics.format_accuracy(0.5, 100) == "50.0% [40.4, 59.6]"
  with pytest.raises(ValueError):
    metrics.wilson_interval(3, 2)


def _truth(num_frames=48, window=(10, 30), box=(8.0, 8.0, 24.0, 24.0)):
  boxes = [list(box) if window[0] <= t < window[1] else None for t in range(num_frames)]
  return {"window": window, "boxes": boxes, "num_frames": num_frames}


def test_reference_frames_follow_tsn_test_offsets():
  n, s = 48, 25
  tick = (n - 1 + 1) / s
  expected_rgb = [int(tick / 2 + tick * k) for k in range(s)]
  np.testing.assert_array_equal(mechanism.reference_frames(n, s, "rgb"), expected_rgb)
  fields = n - 1
  tick = (fields - 5 + 1) / s
  expected_flow = [int(tick / 2 + tick * k) + 2 for k in range(s)]
  np.testing.assert_array_equal(mechanism.reference_frames(n, s, "flow"), expected_flow)


def test_selection_precision_and_dcw_precision_against_numpy():
  rng = np.random.default_rng(0)
  truth = {"a": _truth(window=(0, 20)), "b": _truth(window=(30, 48))}
  inside, ref = mechanism.in_window(["a", "b"], truth, 25, "rgb")
  np.testing.assert_array_equal(inside[0], ref[0] < 20)
  np.testing.assert_array_equal(inside[1], ref[1] >= 30)
  probs = rng.dirichlet(np.ones(5), size=(2, 25))
  # Make the in-window segments confident: DCW's top-k must then be inside the window.
  probs[inside] = np.eye(5)[0] * 0.96 + 0.01
  p = mechanism.dcw_precision(probs, inside, top_k=5)
  assert p["precision"] == 1.0 and p["base_rate"] == pytest.approx(inside.mean())
  # Independent count with a random selection.
  selected = rng.random((2, 25)) < 0.3
  q = mechanism.selection_precision(selected, inside)
  assert q["precision"] == pytest.approx((selected & inside).sum() / selected.sum())


def test_tam_selection_per_segment_group():
  probs = np.full((1, 9, 3), 1 / 3)
  for s in (1, 3, 8):                       # one confident snippet per group of 3
    probs[0, s] = [0.98, 0.01, 0.01]
  selected = mechanism.tam_selection(probs, top_n=1, num_segments=3)
  np.testing.assert_array_equal(np.flatnonzero(selected[0]), [1, 3, 8])


def test_entropy_inside_outside():
  probs = np.array([[[1.0, 0.0], [0.5, 0.5]]])
  inside = np.array([[True, False]])
  e = mechanism.entropy_inside_outside(probs, inside)
  assert e["entropy_in_window"] == pytest.approx(0.0, abs=1e-9)
  assert e["entropy_outside_window"] == pytest.approx(math.log(2))


def test_attention_in_box_uniform_is_area_and_peaked_is_more():
  truth = {"v": _truth(window=(0, 48), box=(0.0, 0.0, 32.0, 32.0))}
  _, ref = mechanism.in_window(["v"], truth, 25, "rgb")
  uniform = np.full((1, 25, 3, 3), 1 / 9)
  out = mechanism.attention_in_box(["v"], uniform, truth, ref, (0, 0), 96)
  assert out["attention_in_box"] == pytest.approx(1 / 9)
  assert out["box_area_fraction"] == pytest.approx(1 / 9)
  peaked = np.zeros((1, 25, 3, 3))
  peaked[..., 0, 0] = 1.0                      # all mass on the top-left cell = the box
  out = mechanism.attention_in_box(["v"], peaked, truth, ref, (0, 0), 96)
  assert out["attention_in_box"] == pytest.approx(1.0)
  # A crop offset that moves the box out of the crop leaves nothing to measure.
  out = mechanism.attention_in_box(["v"], peaked, truth, ref, (0, 40), 96)
  assert out["attention_in_box"] is None and out["num_segments_with_object"] == 0


def test_load_ground_truth_rescales(tmp_path):
  data = {"frame_size": [48, 64], "videos": {"v": {"evidence_frames": [1, 3],
                                                     "boxes": [None, [0, 0, 8, 6], [2, 2, 10, 8],
                                                               None]}}}
  path = tmp_path / "boxes.json"
  path.write_text(json.dumps(data))
  truth = mechanism.load_ground_truth(str(path), frame_size=(96, 128))
  assert truth["v"]["window"] == (1, 3) and truth["v"]["num_frames"] == 4
  assert truth["v"]["boxes"][1] == [0, 0, 16, 12]
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(ValueError, match="bad.json"):
    mechanism.load_ground_truth(str(tmp_path / "bad.json"))


def test_best_selection_precision_is_a_perfect_selector_of_the_same_shape():
  rng = np.random.default_rng(1)
  inside = rng.random((7, 9)) < 0.4
  # Brute force: the best top-1-per-group-of-3 selection picks an inside snippet in every group
  # that has one; the best overall top-4 picks min(4, #inside) inside snippets.
  per_group = np.mean([[inside[v, 3 * g:3 * g + 3].any() for g in range(3)] for v in range(7)])
  assert mechanism.best_selection_precision(inside, 1, 3) == pytest.approx(per_group)
  overall = np.mean([min(4, inside[v].sum()) / 4 for v in range(7)])
  assert mechanism.best_selection_precision(inside, 4) == pytest.approx(overall)
  # No trained selector beats it: the selection of any probabilities is at most the ceiling.
  probs = rng.dirichlet(np.ones(4), size=(7, 9))
  selected = mechanism.tam_selection(probs, 1, 3)
  assert mechanism.selection_precision(selected, inside)["precision"] <= per_group + 1e-12
  with pytest.raises(ValueError, match="top_n=4 of 3"):
    mechanism.best_selection_precision(inside, 4, 3)


def test_attention_static_share_closed_forms():
  k = 3
  rng = np.random.default_rng(0)
  prior = rng.dirichlet(np.ones(k * k)).reshape(k, k)
  # The same map for every (video, segment): all of the departure is the mean map.
  same = np.broadcast_to(prior, (4, 5, k, k))
  assert mechanism.attention_static_share(same) == pytest.approx(1.0)
  # One-hot maps at every location equally often: the mean map is uniform.
  onehot = np.eye(k * k).reshape(k * k, 1, k, k)
  assert mechanism.attention_static_share(onehot) == pytest.approx(0.0, abs=1e-12)
  # Uniform maps: no departure to share.
  assert mechanism.attention_static_share(np.full((2, 3, k, k), 1 / k ** 2)) is None
  # Random maps against a direct evaluation of N |mean - u|^2 / sum |a - u|^2.
  maps = rng.dirichlet(np.ones(k * k) * 0.5, size=(6, 7)).reshape(6, 7, k, k)
  flat = maps.reshape(-1, k * k)
  u = np.full(k * k, 1 / k ** 2)
  want = sum(np.sum((flat.mean(0) - u) ** 2) for _ in flat) / sum(np.sum((a - u) ** 2)
                                                                   for a in flat)
  assert mechanism.attention_static_share(maps) == pytest.approx(want, rel=1e-12)
  assert 0.0 < want < 1.0


def test_cell_evidence_counts_the_centre_cell_and_untouched_cells():
  """Box (36, 4, 60, 28) in a 96-px crop, K = 3 (cells of 32 px): it lies inside cell (row 0,
  col 1), which holds its centre (48, 16); the off-object cells are the 8 others.
  Probabilities are built so the counts are known."""
  k, c, s = 3, 4, 25
  truth = {"v": _truth(window=(0, 48), box=(36.0, 4.0, 60.0, 28.0))}
  _, ref = mechanism.in_window(["v"], truth, s, "rgb")
  probs = np.full((1, s, k, k, c), 0.1)
  probs[..., 3] = 0.7                           # every cell says class 3 ...
  probs[0, :, 0, 1] = [0.1, 0.7, 0.1, 0.1]      # ... except the centre cell: class 1 (true)
  out = mechanism.cell_evidence(["v"], probs, np.array([1]), truth, ref, (0, 0), 96)
  assert out["cell_pairs_on_object"] == s and out["cell_pairs_off_object"] == 8 * s
  assert out["cell_accuracy_on_object"] == 1.0 and out["cell_accuracy_off_object"] == 0.0
  assert out["cell_true_prob_on_object"] == pytest.approx(0.7)
  assert out["cell_true_prob_off_object"] == pytest.approx(0.1)
  # Shifted crop (dx = 40): the box is at x 0..20 of the crop, centre cell (0, 0); (0, 1)
  # is then off the object (it is not touched) and says the true class.
  out = mechanism.cell_evidence(["v"], probs, np.array([1]), truth, ref, (0, 40), 96)
  assert out["cell_accuracy_on_object"] == 0.0
  assert out["cell_accuracy_off_object"] == pytest.approx(1 / 8)
  # Object outside the crop: nothing measured.
  out = mechanism.cell_evidence(["v"], probs, np.array([1]), truth, ref, (70, 0), 96)
  assert out["cell_accuracy_on_object"] is None and out["cell_pairs_off_object"] == 0


def _cell_pool(x, k):
  """(N, H, W, C) -> (N, K, K, C): each cell the mean of its own square (a local network)."""
  n, h, w, c = x.shape
  return x.reshape(n, k, h // k, k, w // k, c).mean(axis=(2, 4))


def test_cell_gradients_and_own_share_closed_forms():
  """A network whose cells pool their own squares: the gradient of cell (i, j)'s logit is
  sum_d |w_d,label| / (H/K * W/K) on its square and 0 elsewhere (own share 1). One whose cells
  all pool the whole input: the gradient is even (own share 1 / K², neighbourhood its area)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sta_cnn_jax import evaluate  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  k, h, w, c, classes = 3, 12, 18, 2, 4
  x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(c, classes)), jnp.float32)
  labels = jnp.asarray([1, 3])
  local = np.asarray(evaluate.cell_logit_input_gradients(lambda v: _cell_pool(v, k), kernel,
                                                         x, labels))
  assert local.shape == (2, k, k, h, w)
  for n in range(2):
    expected = np.abs(np.asarray(kernel)[:, int(labels[n])]).sum() / ((h // k) * (w // k))
    for i in range(k):
      for j in range(k):
        square = np.zeros((h, w))
        square[i * h // k:(i + 1) * h // k, j * w // k:(j + 1) * w // k] = expected
        np.testing.assert_allclose(local[n, i, j], square, rtol=1e-5, atol=1e-7)
  share = mechanism.own_cell_gradient_share(local)
  assert share['grid'] == k
  assert share['own_cell_share'] == pytest.approx(1.0)
  assert share['neighbourhood_share'] == pytest.approx(1.0)
  whole = lambda v: jnp.broadcast_to(v.mean(axis=(1, 2))[:, None, None], (v.shape[0], k, k, c))
  even = mechanism.own_cell_gradient_share(np.asarray(
      evaluate.cell_logit_input_gradients(whole, kernel, x, labels)))
  # Neighbourhoods on a 3x3 grid: 4 corners of 4 cells, 4 edges of 6, the centre of 9.
  assert even['own_cell_share'] == pytest.approx(1 / 9, rel=1e-5)
  assert even['own_cell_chance'] == pytest.approx(1 / 9)
  assert even['neighbourhood_share'] == pytest.approx((4 * 4 + 4 * 6 + 9) / 81, rel=1e-5)
  assert even['neighbourhood_chance'] == pytest.approx(even['neighbourhood_share'], rel=1e-5)


def test_cell_receptive_field_names_the_missing_fidelity_folder(tmp_path):
  from benchmarks import cell_receptive_field  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match='shards_validation or shards'):
    cell_receptive_field.shards_of(str(tmp_path))
  (tmp_path / 'shards').mkdir()
  assert cell_receptive_field.shards_of(str(tmp_path)) == str(tmp_path / 'shards')
