"""Video-level metrics of the test protocol (NumPy, host side).

TSN and the STA-CNN paper report mean class accuracy; we report it beside top-1 accuracy, for both
video-level predictions: AVE (mean of segment scores) and DCW (Eq. 11).
"""

from typing import Mapping

import numpy as np

from sta_cnn_jax import temporal


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """`(C, C)` counts: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
  return matrix


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of videos whose arg-max score `(V, C)` is the label `(V,)`."""
  return float(np.mean(np.argmax(scores, axis=-1) == labels))


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Mean over the classes present in `labels` of per-class recall (TSN's reported metric)."""
  matrix = confusion_matrix(np.argmax(scores, axis=-1), labels, num_classes)
  support = matrix.sum(axis=1)
  present = support > 0
  return float(np.mean(np.diag(matrix)[present] / support[present]))


def video_scores(segment_probs: np.ndarray, dcw_top_k: int) -> dict[str, np.ndarray]:
  """Video-level scores `(V, C)` from crop-averaged segment probabilities `(V, S, C)`.

  'ave' is the plain mean (a distribution); 'dcw' is Eq. 11 divided by Σ β α so that it is a
  distribution too (same arg-max as Eq. 11, comparable across streams for fusion).
  """
  ave = np.asarray(temporal.ave_predict(segment_probs))
  dcw = np.asarray(temporal.dcw_predict(segment_probs, top_k=dcw_top_k))
  dcw = dcw / np.maximum(dcw.sum(axis=-1, keepdims=True), np.finfo(np.float32).tiny)
  return {"ave": ave, "dcw": dcw}


def summarize(scores: Mapping[str, np.ndarray], labels: np.ndarray,
              num_classes: int) -> dict[str, dict[str, float]]:
  """{method: {'top1': …, 'mean_class_accuracy': …}} for each video-level score array `(V, C)`."""
  return {name: {"top1": top1_accuracy(s, labels),
                 "mean_class_accuracy": mean_class_accuracy(s, labels, num_classes)}
          for name, s in scores.items()}


# Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion correct / total (95% by default).

  Accuracy on V test videos is a proportion: with V = 100 one video is 1 point, and the 95%
  interval around 50% is about ±10 points. Wilson's interval (unlike the normal
  approximation) stays inside [0, 1] and is sensible at 0% and 100%.
  """
  if total <= 0:
    raise ValueError(f"wilson_interval needs total > 0, got {total}")
  if not 0 <= correct <= total:
    raise ValueError(f"wilson_interval: correct={correct} not in [0, {total}]")
  p = correct / total
  denom = 1.0 + z * z / total
  centre = (p + z * z / (2 * total)) / denom
  half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
  low = 0.0 if correct == 0 else max(centre - half, 0.0)
  high = 1.0 if correct == total else min(centre + half, 1.0)
  return float(low), float(high)


def format_accuracy(accuracy: float, total: int) -> str:
  """'41.7% [25.5, 59.2]': an accuracy with its 95% Wilson interval, in percent."""
  low, high = wilson_interval(int(round(accuracy * total)), total)
  return f"{accuracy:.1%} [{100 * low:.1f}, {100 * high:.1f}]"
