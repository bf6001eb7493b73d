"""Algorithm 1's backward pass through the selected snippets only, reusing the forward pass
(`config.temporal.tam_backward = 'reuse'`).

'masked' (the literal Algorithm 1) forwards all B·S snippets with gradient tracking and then
back-propagates every one of them, the unselected ones with zero cotangents: 3·S forwards of
work a video. 'recompute' scores without gradient and forwards + back-propagates the selected
ones again: S + 3·selected. 'reuse' forwards once with gradient tracking, as 'masked' does,
and back-propagates only the selected snippets' part of that forward pass: S + 2·selected
(0.56x 'masked' for TS(3×3,3×1)), with the loss, gradients, α, β and BN updates of 'masked'.

It needs the network to be per-snippet after its first BatchNorm, which TSN's partial BN makes
it (`model.partial_bn`: only `conv1_7x7_s2_bn` normalises with batch statistics):

  stem   x (B·S, H, W, C_in) -> h = conv1_7x7_s2_bn(conv1_7x7_s2(x)) (B·S, H/2, W/2, 64)
         couples the snippets through the BN's batch statistics: forwarded and
         back-propagated for all B·S snippets (its cotangent is zero for unselected ones,
         but the statistics pass gradient to every snippet, as in 'masked');
  trunk  (h, x) -> logits, aux logits: every row depends on its own snippet only, so the
         pullback of the selected rows needs only their rows of the forward's residuals.

`restricted_pullback` does that last step: the residuals of `jax.vjp` (the leaves of its VJP
pytree) of a per-row function over n rows hold each row's values along one axis, so gathering
the selected rows of each residual gives the pullback of the same function over those rows.
Which axis holds the rows is read off a second VJP of the same function over k rows (traced
only for its structure; XLA removes its computation).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from sta_cnn_jax.models.bn_inception import FIRST_BN

# The (module name, method) whose output separates the stem from the trunk.
SPLIT_METHOD = '__call__'


def _is_split(module: nn.Module, method_name: str) -> bool:
  return module.name == FIRST_BN and method_name == SPLIT_METHOD


def stem_output(apply: Callable[..., Any], variables: dict, x: jnp.ndarray, rng: jax.Array
                ) -> tuple[jnp.ndarray, dict]:
  """(h (B·S, H/2, W/2, 64), new model state) of a training forward; h is FIRST_BN's output.

  The rest of the network is traced but unused (XLA removes it). The model state is the full
  forward's (FIRST_BN's running averages from all B·S snippets; the others are frozen).
  """
  _, state = apply(variables, x, train=True, mutable=['batch_stats', 'intermediates'],
                   rngs={'dropout': rng}, capture_intermediates=_is_split)
  found = [v for k, v in traverse_util.flatten_dict(state['intermediates']).items()
           if k[-2:] == (FIRST_BN, SPLIT_METHOD)]
  if len(found) != 1:
    raise ValueError(f'reuse_backward.py: the model has {len(found)} BatchNorms named '
                     f'{FIRST_BN!r}; tam_backward=reuse splits the network after exactly one')
  return found[0][0], {'batch_stats': state['batch_stats']}


def trunk_output(apply: Callable[..., Any], variables: dict, h: jnp.ndarray, x: jnp.ndarray,
                 rng: jax.Array) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """(logits, aux logits) (B·S, C) of a training forward with FIRST_BN's output replaced by
  h; x still feeds what reads the input directly (the RGB stream's SAN)."""
  def replace_split(next_fun, args, kwargs, context):
    if _is_split(context.module, context.method_name):
      return h
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(replace_split):
    out, _ = apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': rng})
  return out['logits'], out['aux_logits']


def _restricted_leaf(full: jnp.ndarray, like: jax.ShapeDtypeStruct, n: int,
                     rows: jnp.ndarray) -> jnp.ndarray:
  """`full`'s rows `rows` along the one axis on which `full` (n rows) and `like` (k rows)
  differ; the whole leaf where they do not (a residual that no row owns: weights, BN
  statistics)."""
  if full.shape == like.shape:
    return full
  k = rows.shape[0]
  axes = [i for i, (a, b) in enumerate(zip(full.shape, like.shape)) if a != b]
  if full.ndim != len(like.shape) or len(axes) != 1 or full.shape[axes[0]] % n:
    raise ValueError(f'reuse_backward.py: a residual of shape {full.shape} ({n} rows) has no '
                     f'row axis matching {like.shape} ({k} rows)')
  axis = axes[0]
  per_row = full.shape[axis] // n
  if like.shape[axis] != k * per_row:
    raise ValueError(f'reuse_backward.py: residual axis {axis} of {full.shape} ({n} rows) '
                     f'and of {like.shape} ({k} rows) do not scale with the rows')
  split = full.reshape(full.shape[:axis] + (n, per_row) + full.shape[axis + 1:])
  return jnp.take(split, rows, axis=axis).reshape(like.shape)


def restricted_pullback(pullback: Any, template: Any, n: int, rows: jnp.ndarray) -> Any:
  """The pullback of a per-row function over the rows `rows` (k,) of its n-row pullback.

  pullback: `jax.vjp`'s VJP of f over n rows; template: a VJP of the same f over k rows (only
  its structure and shapes are used). Rows must not interact in f (no batch statistics):
  each residual is then either row-free or holds the rows' values along one axis, as the
  n-row and the k-row residual shapes show.
  """
  leaves, _ = jax.tree_util.tree_flatten(pullback)
  like, treedef = jax.tree_util.tree_flatten(template)
  if len(leaves) != len(like):
    raise ValueError(f'reuse_backward.py: {len(leaves)} residuals over {n} rows but '
                     f'{len(like)} over {rows.shape[0]}: the function is not traced alike')
  return jax.tree_util.tree_unflatten(
      treedef, [_restricted_leaf(a, b, n, rows) for a, b in zip(leaves, like)])
