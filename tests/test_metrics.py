"""Video-level metrics vs hand-counted references."""

import numpy as np

from sta_cnn_jax import metrics


def one_hot_scores(preds, num_classes):
  return np.eye(num_classes)[np.asarray(preds)]


def test_confusion_matrix_counts():
  labels = np.array([0, 0, 1, 2, 2, 2])
  preds = np.array([0, 1, 1, 2, 0, 2])
  want = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  np.testing.assert_array_equal(metrics.confusion_matrix(preds, labels, 3), want)


def test_top1_and_mean_class_accuracy_differ_on_imbalanced_classes():
  # class 0: 1/2 right, class 1: 1/1, class 2: 2/3 → mean class acc = (0.5 + 1 + 2/3) / 3.
  labels = np.array([0, 0, 1, 2, 2, 2])
  scores = one_hot_scores([0, 1, 1, 2, 0, 2], 4)       # class 3 absent: not averaged in
  assert metrics.top1_accuracy(scores, labels) == 4 / 6
  np.testing.assert_allclose(metrics.mean_class_accuracy(scores, labels, 4), (0.5 + 1 + 2 / 3) / 3)


def test_video_scores_are_distributions_with_eq11_argmax():
  rng = np.random.RandomState(0)
  logits = rng.randn(4, 25, 6) * rng.rand(4, 25, 1) * 5
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  scores = metrics.video_scores(probs.astype(np.float32), dcw_top_k=15)
  np.testing.assert_allclose(scores["ave"], probs.mean(1), rtol=1e-5)
  np.testing.assert_allclose(scores["dcw"].sum(-1), 1.0, rtol=1e-5)
  entropy = -(probs * np.log(probs)).sum(-1)
  alpha = 1 / entropy
  raw = np.zeros((4, 6))
  for v in range(4):
    top = np.argsort(-alpha[v], kind="stable")[:15]
    raw[v] = (alpha[v, top, None] * probs[v, top]).sum(0)
  np.testing.assert_allclose(scores["dcw"], raw / raw.sum(-1, keepdims=True), rtol=1e-4)


def test_summarize_reports_each_method():
  labels = np.array([0, 1])
  out = metrics.summarize({"ave": one_hot_scores([0, 0], 2), "dcw": one_hot_scores([0, 1], 2)},
                          labels, 2)
  assert out["ave"] == {"top1": 0.5, "mean_class_accuracy": 0.5}
  assert out["dcw"] == {"top1": 1.0, "mean_class_accuracy": 1.0}
