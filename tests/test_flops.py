"""flops.py against (a) the published BN-Inception count and (b) an independent count of the
convolutions and matmuls in the traced model (jaxpr; tracing only, nothing is compiled)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sta_cnn_jax import flops
from sta_cnn_jax.models import STACNN, BNInception, SpatialAttentionNetwork, input_channels

# The published BN-Inception counted with PyTorch hooks (docs/design.md "Interpretations",
# "BN-Inception"): 4.065 GFLOP at 224, 1000-way.
PUBLISHED_BN_INCEPTION_GFLOP = 4.065


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def traced_ops(jaxpr):
  """[(primitive, flops, info)] of every conv / dot_general in a jaxpr, in program order.

  conv: 2 · prod(output) · prod(kernel spatial) · C_in / groups; dot: 2 · prod(output) ·
  prod(contracted dims) -- read off the traced shapes, independently of flops.py's tables.
  """
  ops = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      out = eqn.outvars[0].aval.shape
      dn = eqn.params['dimension_numbers']
      kernel_spatial = [rhs[d] for d in dn.rhs_spec[2:]]
      cin = rhs[dn.rhs_spec[1]]
      flop = 2 * math.prod(out) * math.prod(kernel_spatial) * cin // eqn.params[
          'feature_group_count']
      info = (lhs[dn.lhs_spec[2]], lhs[dn.lhs_spec[3]], cin, rhs[dn.rhs_spec[0]],
              kernel_spatial[0], eqn.params['window_strides'][0])
      ops.append(('conv', flop, info))
    elif eqn.primitive.name == 'dot_general':
      lhs = eqn.invars[0].aval.shape
      (contract, _), _ = eqn.params['dimension_numbers']
      out = eqn.outvars[0].aval.shape
      ops.append(('dot', 2 * math.prod(out) * math.prod(lhs[d] for d in contract), None))
    for sub in _subjaxprs(eqn):
      ops += traced_ops(sub)
  return ops


def traced(model, shape, **kwargs):
  x = jax.ShapeDtypeStruct((1,) + shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape),
                                                **kwargs))
  return traced_ops(jax.make_jaxpr(lambda v, x: model.apply(v, x, **kwargs))(variables, x).jaxpr)


def test_bn_inception_matches_published_count():
  assert flops.bn_inception_flops(224, 224, 3, 1000) / 1e9 == pytest.approx(
      PUBLISHED_BN_INCEPTION_GFLOP, abs=5e-4)
  layers = flops.bn_inception_layers(224, 224)
  assert len(layers) == 69 and layers[-1].out_height == 7
  # Multiply-adds: the 2.03 G of the TSN papers.
  assert flops.bn_inception_flops() / 2 / 1e9 == pytest.approx(2.03, abs=5e-3)


@pytest.mark.parametrize('size,channels,classes', [(224, 3, 1000), (64, 10, 7), (96, 3, 5)])
def test_bn_inception_layers_equal_the_traced_model(size, channels, classes):
  ops = traced(BNInception(classes), (size, size, channels), train=False)
  convs = [info for kind, _, info in ops if kind == 'conv']
  table = flops.bn_inception_layers(size, size, channels)
  # 1x1 stride-1 convs run as matmuls (models/layers.py): the other convs appear as convs.
  assert convs == [layer.shape_key for layer in table if layer.kernel > 1]
  assert len([1 for kind, _, _ in ops if kind == 'dot']) == 1 + len(
      [layer for layer in table if layer.kernel == 1])
  assert sum(f for _, f, _ in ops) == flops.bn_inception_flops(size, size, channels, classes)


@pytest.mark.parametrize('expanded', [False, True])
def test_san_equals_the_traced_model(expanded):
  size = 64
  ops = traced(SpatialAttentionNetwork(), (size, size, 6), predict_flow=expanded)
  assert sum(f for _, f, _ in ops) == flops.san_flops(size, size, expanded_part=expanded)
  assert ([info for _, _, info in ops] ==
          [layer.shape_key for layer in flops.san_layers(size, size, expanded_part=expanded)])


@pytest.mark.parametrize('modality,spatial,aux', [
    ('rgb', True, True), ('rgb', True, False), ('rgb', False, False),
    ('flow', True, True), ('warpflow', False, False)])
def test_stacnn_equals_the_traced_model(modality, spatial, aux):
  size, classes, widths = 64, 11, (8, 8, 16, 16, 16, 16, 24, 24, 32, 32)
  model = STACNN(classes, modality, spatial, aux, san_widths=widths)
  ops = traced(model, (size, size, input_channels(modality)), train=False)
  # The traced RGB model also computes the Expanded Part's flow (XLA drops it when unused).
  expected = flops.stacnn_flops(classes, modality, spatial, aux, widths, size, size,
                                expanded_part=modality == 'rgb' and spatial)
  assert sum(f for _, f, _ in ops) == expected
  # Without the Expanded Part: the RGB-only difference is exactly its five convs.
  if modality == 'rgb' and spatial:
    expand = flops.conv_flops(flops.san_layers(size, size, widths, expanded_part=True)[10:])
    assert flops.stacnn_flops(classes, modality, spatial, aux, widths, size, size) == (
        expected - expand)


def test_train_step_flops():
  fwd = 1000
  # TSN / masked: 3 forwards' worth per snippet.
  assert flops.train_step_flops(fwd, 4, 3) == 3 * fwd * 12
  assert flops.train_step_flops(fwd, 2, 9, 3, 'masked') == 3 * fwd * 18
  # recompute: S gradient-free forwards + forward and backward of the selected.
  assert flops.train_step_flops(fwd, 2, 9, 3, 'recompute') == fwd * 2 * (9 + 3 * 3)
  # reuse: S forwards with gradient tracking + the backward (2 forwards) of the selected.
  assert flops.train_step_flops(fwd, 2, 9, 3, 'reuse') == fwd * 2 * (9 + 2 * 3)
  with pytest.raises(ValueError, match='flops.py'):
    flops.train_step_flops(fwd, 1, 1, 1, 'partial')


def test_distinct_shapes_cover_every_layer():
  layers = flops.bn_inception_layers(224, 224)
  distinct = list(flops.distinct_shapes(layers))
  assert sum(n for _, n in distinct) == len(layers)
  keys = [layer.shape_key for layer, _ in distinct]
  assert len(set(keys)) == len(keys)
  assert np.isclose(sum(layer.flops * n for layer, n in distinct), flops.conv_flops(layers))


def test_rejects_bad_sizes():
  with pytest.raises(ValueError, match='flops.py'):
    flops.bn_inception_layers(112, 112)
