"""configs/: every row of every dataset builds, names its temporal strategy as the paper does,
carries the §4.1 recipe, overrides from the command line, and initialises a model (shapes only,
jax.eval_shape)."""

import hashlib
import json
import re

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from configs import base, demo, hmdb51, ucf101
from sta_cnn_jax import train
from sta_cnn_jax.models import STACNN

DATASETS = {'ucf101': (ucf101, 101), 'hmdb51': (hmdb51, 51)}
ALL_ROWS = sorted(base.ROWS)
# Table rows the brief lists (Tables 1-3, Fig. 6).
EXPECTED_ROWS = {
    'baseline', 'tsn3', 'tam_ts3_1', 'tam_ts6_1', 'tam_ts9_1', 'tam_ts9_3', 'tam_ts9_6',
    'tam_ts9_9', 'tam_ts3x3_3x1', 'tam_ts3x3_3x2', 'tam_ts3x3_3x3', 'sam_cnn1', 'sam_cnn2',
    'sam_cnn3', 'sta_ts6_1', 'sta_ts9_3', 'sta_ts3x3_3x1'}


def test_rows_are_the_papers():
  assert set(base.ROWS) == EXPECTED_ROWS


# ROWS as they were stored before they had named fields: (N, M, top_n, consensus, spatial
# attention, auxiliary classifier, paper name).
POSITIONAL_ROWS = {
    'baseline': (1, 1, 1, 'average', False, False, 'BN-Inception TS(1,1)'),
    'tsn3': (3, 1, 3, 'average', False, False, 'TSN N=3 (average)'),
    'tam_ts3_1': (3, 1, 1, 'tam', False, False, 'TAM-TS(3,1)'),
    'tam_ts6_1': (6, 1, 1, 'tam', False, False, 'TAM-TS(6,1)'),
    'tam_ts9_1': (9, 1, 1, 'tam', False, False, 'TAM-TS(9,1)'),
    'tam_ts9_3': (9, 1, 3, 'tam', False, False, 'TAM-TS(9,3)'),
    'tam_ts9_6': (9, 1, 6, 'tam', False, False, 'TAM-TS(9,6)'),
    'tam_ts9_9': (9, 1, 9, 'tam', False, False, 'TAM-TS(9,9)'),
    'tam_ts3x3_3x1': (3, 3, 1, 'tam', False, False, 'TAM-TS(3x3,3x1)'),
    'tam_ts3x3_3x2': (3, 3, 2, 'tam', False, False, 'TAM-TS(3x3,3x2)'),
    'tam_ts3x3_3x3': (3, 3, 3, 'tam', False, False, 'TAM-TS(3x3,3x3)'),
    'sam_cnn1': (1, 1, 1, 'average', True, True, 'SAM-CNN1'),
    'sam_cnn2': (3, 1, 3, 'average', True, False, 'SAM-CNN2'),
    'sam_cnn3': (3, 1, 3, 'average', True, True, 'SAM-CNN3'),
    'sta_ts6_1': (6, 1, 1, 'tam', True, True, 'STA-TS(6,1)'),
    'sta_ts9_3': (9, 1, 3, 'tam', True, True, 'STA-TS(9,3)'),
    'sta_ts3x3_3x1': (3, 3, 1, 'tam', True, True, 'STA-TS(3x3,3x1)'),
}
# sha256 of every ucf101 / hmdb51 config (all modalities and rows, JSON with sorted keys),
# taken before ROWS got named fields. Change it only with a deliberate change of the recipe.
CONFIGS_SHA256 = '1af01997bb96c72b5ac3eca288c83f747a5430b7754e2ef8310449b9e789e2d0'
# Keys added since, with the value every paper config must have (dropped before hashing, so the
# hash still proves that nothing else changed).
ADDED_SINCE = {('eval', 'cell_evidence'): False, ('model', 'bn_batch_sums'): 'matmul'}


def _without_added(config: dict) -> dict:
  for (section, key), value in ADDED_SINCE.items():
    assert config[section].pop(key) == value, (section, key)
  return config


def test_named_rows_set_what_the_positional_table_did():
  for row, (n, m, top_n, consensus, spatial, aux, name) in POSITIONAL_ROWS.items():
    c = ucf101.get_config(f'rgb,{row}')
    assert (c.temporal.num_segments, c.temporal.snippets_per_segment, c.temporal.top_n,
            c.temporal.consensus, c.model.spatial_attention, c.model.aux_classifier,
            c.row_name) == (n, m, top_n, consensus, spatial, aux, name), row


def test_every_config_string_builds_the_same_config():
  blob = json.dumps({
      f'{name}:{modality},{row}': _without_added(json.loads(
          module.get_config(f'{modality},{row}').to_json_best_effort(sort_keys=True)))
      for name, (module, _) in DATASETS.items() for modality in base.MODALITIES
      for row in ALL_ROWS}, sort_keys=True)
  assert hashlib.sha256(blob.encode()).hexdigest() == CONFIGS_SHA256


def _parse_paper_name(name):
  """'STA-TS(3x3,3x1)' -> (3, 3, 1); 'TAM-TS(9,3)' -> (9, 1, 3); None if no TS(...)."""
  m = re.search(r'TS\((\d+)(?:x(\d+))?,(\d+)(?:x(\d+))?\)', name)
  if not m:
    return None
  n, m_, a, b = m.groups()
  if m_ is None:
    return int(n), 1, int(a)
  assert int(a) == int(n), name
  return int(n), int(m_), int(b)


@pytest.mark.parametrize('dataset', sorted(DATASETS))
@pytest.mark.parametrize('modality', base.MODALITIES)
def test_every_row_builds_and_names_its_strategy(dataset, modality):
  module, num_classes = DATASETS[dataset]
  for row in ALL_ROWS:
    c = module.get_config(f'{modality},{row}')
    assert (c.dataset, c.num_classes, c.modality, c.row) == (dataset, num_classes, modality, row)
    t = c.temporal
    parsed = _parse_paper_name(c.row_name)
    if parsed is not None:  # TAM / STA rows and the baseline TS(1,1)
      assert parsed == (t.num_segments, t.snippets_per_segment, t.top_n), (row, c.row_name)
    # Row name in the config key and in the paper name agree (tam_ts9_3 <-> TS(9,3)).
    m = re.match(r'(tam|sta)_ts(\d+)(?:x(\d+))?_(?:\d+x)?(\d+)$', row)
    if m:
      assert t.consensus == 'tam'
      assert t.num_segments == int(m.group(2))
      assert t.snippets_per_segment == int(m.group(3) or 1)
      assert t.top_n == int(m.group(4))
      assert c.model.spatial_attention == c.model.aux_classifier == (m.group(1) == 'sta')
      assert c.row_name.startswith(m.group(1).upper() + '-')
    per_group = t.snippets_per_segment if t.snippets_per_segment > 1 else t.num_segments
    assert 1 <= t.top_n <= per_group
    train.check_config(c)


def test_sam_and_baseline_rows():
  c = ucf101.get_config('rgb,sam_cnn1')
  assert (c.temporal.num_segments, c.model.spatial_attention,
          c.model.aux_classifier) == (1, True, True)
  c = ucf101.get_config('rgb,sam_cnn2')
  assert (c.temporal.num_segments, c.temporal.consensus, c.model.spatial_attention,
          c.model.aux_classifier) == (3, 'average', True, False)
  c = ucf101.get_config('rgb,sam_cnn3')
  assert (c.temporal.num_segments, c.temporal.consensus,
          c.model.aux_classifier) == (3, 'average', True)
  c = ucf101.get_config('rgb,tsn3')
  assert (c.temporal.num_segments, c.temporal.consensus,
          c.model.spatial_attention) == (3, 'average', False)
  c = ucf101.get_config('rgb,baseline')
  assert (c.temporal.num_segments, c.temporal.snippets_per_segment,
          c.model.spatial_attention) == (1, 1, False)


def test_recipe_of_section_4_1_and_tsn():
  rgb, flow = ucf101.get_config('rgb,baseline'), ucf101.get_config('flow,baseline')
  warp = hmdb51.get_config('warpflow,baseline')
  for c in (rgb, flow, warp):
    assert (c.momentum, c.weight_decay, c.batch_size) == (0.9, 5e-4, 128)
    assert (c.eval.num_segments, c.eval.num_views, c.eval.dcw_top_k) == (25, 10, 15)
    assert c.input.crop_size == 224 and tuple(c.input.frame_size) == (256, 340)
    assert c.model.partial_bn and c.aux_loss_weight == 0.5
    assert c.parallel == 'pmap' and c.dtype == 'float32'
  assert (rgb.learning_rate, rgb.lr_decay_epochs, rgb.num_epochs) == (1e-3, 20, 50)
  assert (rgb.model.dropout_rate, rgb.grad_clip_norm) == (0.8, 40.0)
  assert tuple(rgb.input.mean) == (104.0, 117.0, 128.0) and rgb.input.bgr
  assert tuple(rgb.input.scales) == (1.0, 0.875, 0.75, 0.66)
  for c in (flow, warp):
    assert (c.learning_rate, c.lr_decay_epochs, c.num_epochs) == (5e-3, 120, 300)
    assert (c.model.dropout_rate, c.grad_clip_norm) == (0.7, 20.0)
    assert tuple(c.input.mean) == (128.0,) and not c.input.bgr
    assert tuple(c.input.scales) == (1.0, 0.875, 0.75)


@pytest.mark.parametrize('arg, message', [
    ('rgb', "unknown row 'rgb'"),
    ('depth,baseline', "unknown modality 'depth'"),
    ('rgb,tam_ts4_1', "unknown row 'tam_ts4_1'"),
    ('rgb,baseline,x', "expected '<modality>,<row>'"),
])
def test_bad_config_argument_is_named(arg, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    ucf101.get_config(arg)


def test_demo_accepts_row_names():
  for row in ALL_ROWS:
    c = demo.get_config(row)
    assert c.row == row and c.modality == 'rgb'
    assert c.input.crop_size % 32 == 0 and c.num_train_steps > 0
  assert demo.get_config('flow,sta_ts6_1').modality == 'flow'


def test_command_line_overrides():
  argv = ['prog', '--config=configs/hmdb51.py:flow,tam_ts9_3', '--config.learning_rate=0.1',
          '--config.temporal.top_n=2', '--config.model.san_widths=(8,8,8,8,8,8,8,8,8,8)']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'cfg', flag_values=values, sys_argv=argv)
  values(argv)
  c = values.config
  assert (c.dataset, c.modality, c.row, c.learning_rate, c.temporal.top_n) == (
      'hmdb51', 'flow', 'tam_ts9_3', 0.1, 2)
  assert tuple(c.model.san_widths) == (8,) * 10


def _model_key(c):
  return (c.modality, c.model.spatial_attention, c.model.aux_classifier)


def test_every_model_variant_initialises_at_224():
  """jax.eval_shape of STACNN.init for each distinct model of the rows (shapes only)."""
  seen = {}
  for modality in ('rgb', 'flow'):
    for row in ALL_ROWS:
      c = ucf101.get_config(f'{modality},{row}')
      seen.setdefault(_model_key(c), c)
  assert len(seen) == 6
  for (modality, spatial, aux), c in seen.items():
    model = train.create_model(c, 101)
    assert isinstance(model, STACNN)
    shape = train.input_shape(c)
    assert shape == (224, 224, 6 if modality == 'rgb' else 10)
    variables = jax.eval_shape(
        lambda k, m=model, s=shape: m.init(k, jnp.zeros((1,) + s), train=False),
        jax.random.PRNGKey(0))
    params = variables['params']
    assert params['acn']['fc']['kernel'].shape == (1024, 101)
    assert params['acn']['conv1_7x7_s2']['kernel'].shape[2] == (3 if modality == 'rgb' else 10)
    assert ('san' in params) == (spatial and modality == 'rgb')
    assert ('sal' in params) == spatial
    assert ('aux_fc' in params) == aux
