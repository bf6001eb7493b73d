"""Losses of STA-CNN.

- `cross_entropy`          softmax cross-entropy with integer labels (Eq. 6 and 10's terms; the
                           printed Eq. 6 lacks the minus sign and the softmax, we use the standard CE).
- `tam_loss`               Algorithm 1: mean per-snippet loss over the selected snippets only.
- `average_consensus_loss` TSN: CE of the segment-averaged logits.
- `relaxed_flow_mse`       Eq. 3–4: SAN + Expanded Part pre-training on flow.
- `joint_loss`             Eq. 10: L = L_cla + λ·L_aux.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

# Eq. 4: the relaxation threshold is θ = e^{-2}·|f| (elementwise on the real flow f).
RELAXATION_FACTOR = float(jnp.exp(-2.0))


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Per-example softmax cross-entropy: logits `(..., C)`, integer labels `(...)` → `(...)`."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def joint_loss(cla_loss: jnp.ndarray, aux_loss: jnp.ndarray, lam: float) -> jnp.ndarray:
  """Eq. 10: L = L(ŷ_cla, y) + λ·L_aux(ŷ_san, y) (elementwise, so it works per snippet)."""
  return cla_loss + lam * aux_loss


def snippet_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                 aux_logits: Optional[jnp.ndarray] = None, aux_weight: float = 0.0) -> jnp.ndarray:
  """Per-snippet loss l(s_n) of Algorithm 1 (Eq. 10 per snippet).

  Args:
    logits: `(B, S, C)` action-classifier logits.
    labels: `(B,)` integer video labels (shared by the video's snippets).
    aux_logits: optional `(B, S, C)` logits of the SAN's GAP classifier (Eq. 5–6).
    aux_weight: λ of Eq. 10.

  Returns:
    `(B, S)` per-snippet losses.
  """
  snippet_labels = jnp.broadcast_to(labels[:, None], logits.shape[:2])
  loss = cross_entropy(logits, snippet_labels)
  if aux_logits is not None:
    loss = joint_loss(loss, cross_entropy(aux_logits, snippet_labels), aux_weight)
  return loss


def tam_loss(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray,
             aux_logits: Optional[jnp.ndarray] = None, aux_weight: float = 0.0) -> jnp.ndarray:
  """Temporal-attention loss (Algorithm 1, line 6): L = Σ_B Σ_n β_n l(s_n) / Σ β.

  The selection β is `stop_gradient`ed, so unselected snippets receive exactly zero gradient through
  this loss (up to coupling inside the network itself, e.g. BatchNorm batch statistics).

  Args:
    logits: `(B, S, C)`; labels: `(B,)`; mask: `(B, S)` 0/1 selection β;
    aux_logits, aux_weight: optional auxiliary term of Eq. 10, masked the same way.

  Returns:
    Scalar mean loss over the selected snippets.
  """
  beta = jax.lax.stop_gradient(mask).astype(jnp.float32)
  per_snippet = snippet_loss(logits, labels, aux_logits, aux_weight)
  return jnp.sum(beta * per_snippet) / jnp.maximum(jnp.sum(beta), 1.0)


def average_consensus_loss(logits: jnp.ndarray, labels: jnp.ndarray,
                           aux_logits: Optional[jnp.ndarray] = None,
                           aux_weight: float = 0.0) -> jnp.ndarray:
  """TSN segmental consensus: CE of the logits averaged over the S snippets `(B, S, C)`; mean over B."""
  loss = cross_entropy(jnp.mean(logits, axis=1), labels)
  if aux_logits is not None:
    loss = joint_loss(loss, cross_entropy(jnp.mean(aux_logits, axis=1), labels), aux_weight)
  return jnp.mean(loss)


def resize_flow(flow: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
  """Resizes a flow field `(N, H, W, 2)` (x, y in pixels) to `out_hw`, scaling the displacements.

  A displacement of d pixels on a W-wide grid is d·w/W pixels on a w-wide grid (x by w/W, y by h/H).
  Bilinear, antialiased when shrinking.
  """
  n, h_in, w_in, _ = flow.shape
  h_out, w_out = out_hw
  resized = jax.image.resize(flow.astype(jnp.float32), (n, h_out, w_out, 2), method="linear")
  scale = jnp.array([w_out / w_in, h_out / h_in], jnp.float32)
  return resized * scale


def relaxed_flow_mse(pred: jnp.ndarray, target: jnp.ndarray,
                     relaxation: float = RELAXATION_FACTOR) -> jnp.ndarray:
  """Relaxed MSE of Eq. 4: Σ ‖max(|f̂ − f| − θ, 0)‖², θ = e^{-2}·|f| elementwise.

  Args:
    pred: `(N, h, w, 2)` predicted flow f̂ (Expanded Part output, Eq. 3), in pixels of its own grid.
    target: `(N, H, W, 2)` real flow f in pixels of the frame grid; resized to (h, w) with its
      displacements scaled accordingly (`resize_flow`).
    relaxation: the factor in θ (e^{-2} in the paper).

  Returns:
    Scalar: the sum of Eq. 4 over pixels and both components, averaged over the N snippets (the
    paper sums over snippets too; averaging keeps the learning rate independent of the batch size).
  """
  target = resize_flow(target, pred.shape[1:3])
  theta = relaxation * jnp.abs(target)
  excess = jnp.maximum(jnp.abs(pred.astype(jnp.float32) - target) - theta, 0.0)
  return jnp.mean(jnp.sum(jnp.square(excess), axis=(1, 2, 3)))
