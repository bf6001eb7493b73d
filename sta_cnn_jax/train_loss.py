"""The loss of one train step and its gradients: Algorithm 1 (temporal attention, §3.1) with
Eq. 10's auxiliary term, or TSN's averaged consensus; and the step's metrics.

  logits (B, S, C) -> α = 1/H(softmax(logits)) per snippet (Eq. 1-2, stop_gradient) ->
  β = top_n mask (within each of the N segments when M > 1) -> L = Σ β·l(s) / Σ β with
  l(s) = CE(ŷ_cla(s)) + λ·CE(ŷ_san(s)) (Eq. 10 per snippet); 'average': TSN, L = CE(mean_S
  logits) + λ·CE(mean_S aux logits).

Per device; train.train_step averages the gradients and metrics over 'batch'.
"""

from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections

from sta_cnn_jax import losses
from sta_cnn_jax import optim
from sta_cnn_jax import reuse_backward
from sta_cnn_jax import temporal


def temporal_selection(logits: jnp.ndarray, config: ml_collections.ConfigDict
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """α (B, S) from the stop-gradient logits (Eq. 1-2) and the selection β (B, S) (Alg. 1).

  'average' consensus selects every snippet.
  """
  t = config.temporal
  alpha = temporal.segment_confidence(lax.stop_gradient(logits))          # (B, S)
  if t.consensus == 'average':
    return alpha, jnp.ones_like(alpha)
  groups = t.num_segments if t.snippets_per_segment > 1 else None         # TS(NxM, Nxtop_m)
  return alpha, temporal.temporal_attention_mask(alpha, t.top_n, num_segments=groups)


def compute_loss(logits: jnp.ndarray, aux_logits: Optional[jnp.ndarray], labels: jnp.ndarray,
                 mask: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """Algorithm 1 ('tam') or TSN averaged consensus ('average'), each with Eq. 10's aux term."""
  lam = config.aux_loss_weight
  if config.temporal.consensus == 'tam':
    return losses.tam_loss(logits, labels, mask, aux_logits, lam)
  return losses.average_consensus_loss(logits, labels, aux_logits, lam)


def compute_metrics(logits: jnp.ndarray, labels: jnp.ndarray, loss: jnp.ndarray,
                    alpha: jnp.ndarray, mask: jnp.ndarray) -> dict:
  """Per-device metrics (pmean'd by the caller). logits (B, S, C), alpha / mask (B, S)."""
  selected, unselected = mask, 1.0 - mask
  return {
      'loss': loss,
      # Video accuracy of the averaged logits (TSN consensus), and per snippet.
      'accuracy': jnp.mean(jnp.argmax(jnp.mean(logits, axis=1), -1) == labels),
      'snippet_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels[:, None]),
      'alpha_selected': jnp.sum(alpha * selected) / jnp.maximum(jnp.sum(selected), 1.0),
      'alpha_unselected': jnp.sum(alpha * unselected) / jnp.maximum(jnp.sum(unselected), 1.0),
      # Fraction of videos whose snippet at position s (= n*M + m) was selected.
      'selected_fraction': jnp.mean(mask, axis=0),                          # (S,)
  }


def selected_indices(mask: jnp.ndarray, count: int) -> jnp.ndarray:
  """(B, count) positions of the 1s of a 0/1 mask (B, S) with exactly `count` ones per row,
  in increasing order (`lax.top_k` is stable, so ties keep the earlier position)."""
  _, idx = lax.top_k(mask, count)
  return jnp.sort(idx, axis=-1)


def num_selected(config: ml_collections.ConfigDict) -> int:
  """Snippets per video that Algorithm 1 back-propagates: top_n, or N·top_m for TS(N×M)."""
  t = config.temporal
  return t.top_n * (t.num_segments if t.snippets_per_segment > 1 else 1)


def frozen_as_constants(params: Any, config: ml_collections.ConfigDict) -> Any:
  """Under partial BN, the frozen BN scales / shifts enter the network through stop_gradient:
  the optimizer keeps them fixed anyway (`create_optimizer`), and without a gradient XLA does
  not compute the two per-channel reductions per frozen BN (as requires_grad=False does in
  tsn-pytorch). Their gradient is then exactly 0."""
  if not config.model.partial_bn:
    return params
  return jax.tree_util.tree_map(
      lambda label, p: lax.stop_gradient(p) if label == optim.FROZEN else p,
      optim.partial_bn_labels(params), params)


def _apply(state: Any, params: Any, x: jnp.ndarray, rng: jax.Array, b: int, s: int):
  """The network in training mode on (B*S, H, W, C) -> (logits (B, S, C), aux | None, state)."""
  outputs, new_model_state = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
      mutable=['batch_stats'], rngs={'dropout': rng})
  logits = outputs['logits'].reshape(b, s, -1)                              # (B, S, C)
  aux_logits = outputs['aux_logits']
  if aux_logits is not None:
    aux_logits = aux_logits.reshape(b, s, -1)
  return logits, aux_logits, new_model_state


def loss_and_grads(state: Any, x: jnp.ndarray, labels: jnp.ndarray, rng: jax.Array,
                   config: ml_collections.ConfigDict) -> tuple[jnp.ndarray, Any, dict]:
  """Loss and (per-device) gradients of one step; x (B*S, H, W, C_in), labels (B,).

  Returns (loss, grads, aux) with aux = {'model_state', 'logits' (B, S, C) of every snippet,
  'alpha', 'mask' (B, S)}.

  `temporal.tam_backward` (consensus 'tam' only) chooses how Algorithm 1 is differentiated:
    'masked'    the literal algorithm: forward all B·S snippets with gradient tracking, mask the
                per-snippet losses with β; the backward pass still runs through every snippet
                (zero cotangents for the unselected ones) -- 3·S forwards of work per video.
    'recompute' forward all snippets WITHOUT gradient to score α and select β, then gather the
                selected B·N·top_m snippets (static count, jnp.take_along_axis) and forward +
                backward only those -- S + 3·selected forwards of work (0.67x for TS(3×3,3×1)).
    'reuse'     forward all snippets with gradient tracking (as 'masked'), back-propagate the
                selected snippets' part of it only -- S + 2·selected (0.56x); needs partial
                BN; loss, gradients, α, β and BN updates are those of 'masked'
                (sta_cnn_jax/reuse_backward.py).
  Partial BN's first layer (`conv1_7x7_s2_bn`, batch statistics in training) in each mode:
    'masked'    normalises with the statistics of all B·S snippets, gradients flow through them;
                running averages are updated from all B·S snippets.
    'recompute' the scoring pass normalises with the statistics of all B·S snippets and uses
                the same dropout key (so α and β are exactly those of 'masked'); its
                running-average update is the one kept (as in 'masked'); the gradient pass
                normalises the selected snippets with THEIR batch statistics (B·N·top_m of
                them) and its running-average update is discarded. Every other BN uses
                running statistics in both modes; dropout draws fresh masks in the gradient
                pass.
  Hence with BN in running-statistics mode and no dropout both give the same loss and
  gradients (tests/test_recompute.py); with partial BN they differ only through the first BN's
  statistics.
  """
  b = labels.shape[0]
  s = x.shape[0] // b
  t = config.temporal
  if t.consensus != 'tam' or t.tam_backward == 'masked':
    def loss_fn(params):
      params = frozen_as_constants(params, config)
      logits, aux_logits, new_model_state = _apply(state, params, x, rng, b, s)
      alpha, mask = temporal_selection(logits, config)
      loss = compute_loss(logits, aux_logits, labels, mask, config)
      return loss, {'model_state': new_model_state, 'logits': logits, 'alpha': alpha,
                    'mask': mask}
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, grads, aux

  if t.tam_backward == 'reuse':
    return _reuse_loss_and_grads(state, x, labels, rng, config)

  # 'recompute': scoring pass (no gradient is taken through it; the same dropout key as
  # 'masked', so α and β equal masked's also with dropout) ...
  grad_rng = jax.random.fold_in(rng, 1)
  logits, _, scored_model_state = _apply(state, lax.stop_gradient(state.params),
                                         lax.stop_gradient(x), rng, b, s)
  logits = lax.stop_gradient(logits)
  alpha, mask = temporal_selection(logits, config)
  k = num_selected(config)
  idx = selected_indices(mask, k)                                          # (B, K)
  x_sel = jnp.take_along_axis(x.reshape((b, s) + x.shape[1:]),
                              idx.reshape(idx.shape + (1,) * (x.ndim - 1)), axis=1)
  x_sel = x_sel.reshape((b * k,) + x.shape[1:])                            # (B*K, H, W, C_in)

  # ... then forward + backward of the selected snippets only (each has β = 1).
  def loss_fn(params):
    params = frozen_as_constants(params, config)
    sel_logits, sel_aux, _ = _apply(state, params, x_sel, grad_rng, b, k)
    return losses.tam_loss(sel_logits, labels, jnp.ones((b, k), jnp.float32), sel_aux,
                           config.aux_loss_weight)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return loss, grads, {'model_state': scored_model_state, 'logits': logits, 'alpha': alpha,
                       'mask': mask}


def _reuse_loss_and_grads(state: Any, x: jnp.ndarray, labels: jnp.ndarray, rng: jax.Array,
                          config: ml_collections.ConfigDict) -> tuple[jnp.ndarray, Any, dict]:
  """tam_backward='reuse' (see `loss_and_grads` and sta_cnn_jax/reuse_backward.py)."""
  b = labels.shape[0]
  s = x.shape[0] // b
  k = num_selected(config)

  def variables(params):
    return {'params': frozen_as_constants(params, config), 'batch_stats': state.batch_stats}

  def stem(params):
    return reuse_backward.stem_output(state.apply_fn, variables(params), x, rng)

  def trunk_over(x_rows):
    return lambda params, h: reuse_backward.trunk_output(
        state.apply_fn, variables(params), h, x_rows, rng)

  h, stem_pullback, model_state = jax.vjp(stem, state.params, has_aux=True)
  (logits, aux_logits), trunk_pullback = jax.vjp(trunk_over(x), state.params, h)
  logits = logits.reshape(b, s, -1)                                         # (B, S, C)
  if aux_logits is not None:
    aux_logits = aux_logits.reshape(b, s, -1)
  alpha, mask = temporal_selection(logits, config)
  loss, (d_logits, d_aux) = jax.value_and_grad(
      lambda lg, ax: compute_loss(lg, ax, labels, mask, config), argnums=(0, 1))(
          logits, aux_logits)

  # Rows b·S + idx of the selected snippets; only their part of the trunk is pulled back.
  rows = (jnp.arange(b)[:, None] * s + selected_indices(mask, k)).reshape(-1)  # (B·K,)
  template = jax.vjp(trunk_over(jnp.zeros((b * k,) + x.shape[1:], x.dtype)), state.params,
                     jnp.zeros((b * k,) + h.shape[1:], h.dtype))[1]
  pullback = reuse_backward.restricted_pullback(trunk_pullback, template, b * s, rows)
  take = lambda d: None if d is None else d.reshape((b * s,) + d.shape[2:])[rows]
  trunk_grads, d_h_rows = pullback((take(d_logits), take(d_aux)))
  (stem_grads,) = stem_pullback(jnp.zeros_like(h).at[rows].set(d_h_rows))
  grads = jax.tree_util.tree_map(jnp.add, trunk_grads, stem_grads)
  return loss, grads, {'model_state': model_state, 'logits': logits, 'alpha': alpha,
                       'mask': mask}
