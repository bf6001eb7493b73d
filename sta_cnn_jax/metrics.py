"""Video-level metrics of the test protocol (NumPy, host side).

TSN and the STA-CNN paper report mean class accuracy; we report it beside top-1 accuracy, for both
video-level predictions: AVE (mean of segment scores) and DCW (Eq. 11).
"""

import hashlib
import math
from typing import Mapping, Sequence

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


# ---------------------------------------------------------------------------------------------
# Paired comparisons: two predictors on the same test videos.
# ---------------------------------------------------------------------------------------------


def video_set_digest(video_ids: Sequence) -> str:
  """A short fingerprint of a set of test videos (sha1 of the sorted ids): two per-video
  records can be paired only when their digests agree."""
  joined = "\n".join(sorted(str(v) for v in video_ids))
  return hashlib.sha1(joined.encode("utf-8")).hexdigest()[:12]


def correct_string(scores: np.ndarray, labels: np.ndarray, video_ids: Sequence) -> str:
  """Per-video top-1 outcome of scores `(V, C)` as '1' (correct) / '0', in sorted video-id
  order, so that two predictors on the same videos pair position by position."""
  hits = np.argmax(scores, axis=-1) == np.asarray(labels)
  order = sorted(range(len(hits)), key=lambda i: str(video_ids[i]))
  return "".join("1" if hits[i] else "0" for i in order)


def paired_outcomes(scores: Mapping[str, np.ndarray], labels: np.ndarray,
                    video_ids: Sequence) -> dict[str, str]:
  """{'test_videos': digest, '<method>_correct': correct_string} for each video-level score
  array `(V, C)` of `scores` (as `summarize` takes them)."""
  out = {"test_videos": video_set_digest(video_ids)}
  for name, s in scores.items():
    out[f"{name}_correct"] = correct_string(s, labels, video_ids)
  return out


def discordant_pairs(a: str, b: str) -> tuple[int, int]:
  """(wins, losses) of predictor a against b from two `correct_string`s of the same videos:
  videos only a gets right, and videos only b gets right."""
  if len(a) != len(b):
    raise ValueError(f"paired outcomes of different lengths: {len(a)} and {len(b)} videos")
  wins = sum(x == "1" and y == "0" for x, y in zip(a, b))
  losses = sum(x == "0" and y == "1" for x, y in zip(a, b))
  return wins, losses


def mcnemar_exact(wins: int, losses: int) -> float:
  """Two-sided exact McNemar p-value: the binomial test of `wins` against `losses` among the
  discordant pairs under H0 (either predictor equally likely to win a discordant video),
  p = min(1, 2 P[X <= min(wins, losses)]) with X ~ Binomial(wins + losses, 1/2).

  Only the videos the two predictors disagree on carry evidence: 3 won and 1 lost is p = 0.625
  however many videos both got right or wrong.
  """
  if wins < 0 or losses < 0:
    raise ValueError(f"mcnemar_exact needs counts >= 0, got {wins}, {losses}")
  n = wins + losses
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2.0 ** n
  return float(min(1.0, 2.0 * tail))


def paired_test(wins: int, losses: int) -> dict:
  """{'videos_won', 'videos_lost', 'mcnemar_p'} of discordant counts (as reports print them)."""
  return {"videos_won": int(wins), "videos_lost": int(losses),
          "mcnemar_p": mcnemar_exact(wins, losses)}
