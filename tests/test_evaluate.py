"""Test protocol pieces: view averaging per segment, scoring, saved scores that fuse reads."""

import jax
import ml_collections
import numpy as np
import pytest

from sta_cnn_jax import evaluate
from sta_cnn_jax import fuse
from sta_cnn_jax import input_pipeline
from sta_cnn_jax import train
from sta_cnn_jax.models.sta_cnn import STACNN

SIZE = 32                      # smallest BN-Inception input (K = 1); keeps compile time low
SAN_WIDTHS = (4, 4, 4, 4, 8, 8, 8, 8, 8, 8)


def tiny_config():
  config = ml_collections.ConfigDict()
  config.modality = "rgb"
  config.input = ml_collections.ConfigDict(dict(mean=(104.0, 117.0, 128.0), std=(1.0, 1.0, 1.0),
                                                bgr=True))
  config.eval = ml_collections.ConfigDict(dict(cell_evidence=True))
  return config


@pytest.fixture(scope="module")
def model_and_vars():
  model = STACNN(num_classes=5, modality="rgb", spatial_attention=True, aux_classifier=True,
                 dropout_rate=0.5, partial_bn=False, san_widths=SAN_WIDTHS)
  variables = train.initialized(jax.random.PRNGKey(0), model, (SIZE, SIZE, 6), train=False)
  return model, variables


def test_eval_step_averages_softmax_over_views(model_and_vars):
  model, variables = model_and_vars
  config = tiny_config()
  b, s, v = 2, 3, 2
  frames = np.random.RandomState(0).randint(0, 256, (b, s, v, SIZE, SIZE, 6)).astype(np.uint8)
  out = jax.jit(lambda var, f: evaluate.eval_step(var, f, model=model, config=config))(
      variables, frames)
  assert out["probs"].shape == (b, s, 5)
  assert out["attention"].shape == (b, s, 1, 1)
  # Independent path: each view on its own through the model, softmax, then the mean over views.
  x = input_pipeline.normalize(frames.reshape((-1, SIZE, SIZE, 6)), "rgb", config.input.mean,
                               config.input.std, config.input.bgr)
  apply = jax.jit(lambda var, x: model.apply(var, x, train=False)["logits"])  # op by op: ~20 s
  logits = np.asarray(apply(variables, x), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  want = probs.reshape(b, s, v, 5).mean(2)
  np.testing.assert_allclose(out["probs"], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-5)
  # One grid cell (K = 1): the classifier on that cell is the classifier on the pooled
  # features, so 'cell_probs' is the centre view's softmax.
  assert out["cell_probs"].shape == (b, s, 1, 1, 5)
  centre = probs.reshape(b, s, v, 5)[:, :, evaluate.center_view(v)]
  np.testing.assert_allclose(out["cell_probs"][:, :, 0, 0], centre, rtol=1e-4, atol=1e-6)
  # Off by default (configs/base.py): nothing per cell is computed or kept.
  config.eval.cell_evidence = False
  out = jax.jit(lambda var, f: evaluate.eval_step(var, f, model=model, config=config))(
      variables, frames)
  assert "cell_probs" not in out
  np.testing.assert_allclose(out["probs"], want, rtol=1e-4, atol=1e-6)


def test_center_view_index():
  assert evaluate.center_view(10) == 4          # upper_left, upper_right, lower_left, lower_right, center
  assert evaluate.center_view(1) == 0


def test_scores_round_trip_into_fuse(tmp_path):
  rng = np.random.RandomState(1)
  probs = rng.dirichlet(np.ones(4) * 0.3, size=(6, 25)).astype(np.float32)
  segments = {"video_id": np.array([f"v{i}" for i in range(6)]), "label": np.arange(6) % 4,
              "segment_probs": probs}
  scores, results = evaluate.score_videos(segments, 4, dcw_top_k=15)
  assert results["num_videos"] == 6
  assert np.asarray(results["confusion"]["dcw"]).sum() == 6
  assert results["metrics"]["ave"]["top1"] == pytest.approx(
      np.mean(probs.mean(1).argmax(-1) == segments["label"]))
  evaluate.save_scores(str(tmp_path), segments, scores, ["a", "b", "c", "d"])
  loaded = fuse.load_scores(str(tmp_path))
  np.testing.assert_array_equal(loaded["video_id"], segments["video_id"])
  np.testing.assert_allclose(loaded["dcw"], scores["dcw"])
  report = fuse.fusion_report([str(tmp_path), str(tmp_path)], [1.0, 1.0])
  assert report["fused"]["dcw"] == results["metrics"]["dcw"]
