"""Video-level metrics vs hand-counted references."""

import numpy as np
import pytest

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


def _two_sided_sign_test_by_enumeration(wins, losses):
  """Independent reference: enumerate every outcome of n fair coin flips (as bit patterns) and
  add the probability of those at most as likely as the observed split (the two-sided exact
  binomial test; for p = 1/2 it equals twice the smaller tail, capped at 1)."""
  n = wins + losses
  counts = np.array([bin(k).count('1') for k in range(2 ** n)])
  prob = np.bincount(counts, minlength=n + 1) / 2.0 ** n
  return min(1.0, float(prob[prob <= prob[wins] * (1 + 1e-12)].sum()))


def test_mcnemar_exact_against_enumeration_and_closed_forms():
  for wins, losses in [(0, 0), (1, 0), (3, 1), (0, 5), (7, 7), (2, 9), (12, 3), (0, 14)]:
    assert metrics.mcnemar_exact(wins, losses) == pytest.approx(
        _two_sided_sign_test_by_enumeration(wins, losses), rel=1e-12, abs=1e-15)
  assert metrics.mcnemar_exact(3, 1) == 10 / 16           # 2 (1 + 4) / 2^4
  assert metrics.mcnemar_exact(0, 5) == 2 / 32
  assert metrics.mcnemar_exact(4, 4) == 1.0
  assert metrics.mcnemar_exact(2, 9) == metrics.mcnemar_exact(9, 2)
  with pytest.raises(ValueError, match='>= 0'):
    metrics.mcnemar_exact(-1, 2)


def test_paired_outcomes_pair_videos_by_id_whatever_their_order():
  labels = np.array([0, 1, 2, 1])
  ids = ['v3', 'v1', 'v2', 'v0']
  a = np.eye(3)[[0, 1, 0, 0]]              # right on v3, v1; wrong on v2, v0
  b = np.eye(3)[[1, 1, 2, 1]]              # right on v1, v2, v0; wrong on v3
  order = [3, 1, 2, 0]                     # the same videos listed in another order
  pa = metrics.paired_outcomes({'ave': a}, labels, ids)
  pb = metrics.paired_outcomes({'ave': b[order]}, labels[order], [ids[i] for i in order])
  assert pa['test_videos'] == pb['test_videos']
  assert pa['ave_correct'] == '0101'       # v0 v1 v2 v3
  assert pb['ave_correct'] == '1110'
  assert metrics.discordant_pairs(pa['ave_correct'], pb['ave_correct']) == (1, 2)
  other = metrics.paired_outcomes({'ave': a}, labels, ['v3', 'v1', 'v2', 'v9'])
  assert other['test_videos'] != pa['test_videos']
  with pytest.raises(ValueError, match='different lengths'):
    metrics.discordant_pairs('01', '011')
