"""Tests for sta_cnn_jax.visualize: attention overlays, attention mass in a box, PNG figures."""

import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sta_cnn_jax import visualize

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K = 7
MIN_PIXEL_STD = 10.0  # a blank (single-colour) PNG has std 0
ORANGE = np.array([255, 127, 14])  # matplotlib tab:orange, the "selected segment" colour


# ---------------------------------------------------------------------------------------------
# NumPy references.
# ---------------------------------------------------------------------------------------------
def bilinear_reference(grid, height, width):
  """Half-pixel-centred bilinear resize with clamped edges, written out per axis."""
  def weights(out_size, in_size):
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    low = np.floor(src).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    matrix = np.zeros((out_size, in_size))
    matrix[np.arange(out_size), low] += 1 - frac
    matrix[np.arange(out_size), high] += frac
    return matrix
  return weights(height, grid.shape[0]) @ grid @ weights(width, grid.shape[1]).T


def read_png(path):
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  assert image is not None, f'{path} is not a decodable image'
  assert pathlib.Path(path).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  return image[..., ::-1]  # RGB


def panel_pixels(inches):
  return int(round(inches * visualize.DPI))


@pytest.fixture(scope='module')
def real_frames(testdata_dir):
  """Three real RGB frames (mmaction2 test images, 240x320)."""
  folder = testdata_dir / 'rawframes' / 'mmaction2_tests_imgs'
  frames = [cv2.imread(str(folder / f'img_0000{i}.jpg'))[..., ::-1] for i in (1, 4, 8)]
  return np.stack(frames)


def one_hot(row, col, k=K):
  grid = np.zeros((k, k), np.float32)
  grid[row, col] = 1.0
  return grid


# ---------------------------------------------------------------------------------------------
# attention_overlay.
# ---------------------------------------------------------------------------------------------
def test_attention_overlay_matches_numpy_reference():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
  attention = rng.dirichlet(np.ones(K * K)).reshape(K, K).astype(np.float32)  # a softmax map
  got = visualize.attention_overlay(frame, attention)
  weights = bilinear_reference(attention.astype(np.float64), 60, 90)
  want = np.rint(frame * (weights / weights.max())[..., None])
  assert got.dtype == np.uint8 and got.shape == frame.shape
  assert np.max(np.abs(got.astype(int) - want)) <= 1


def test_attention_overlay_one_hot_and_zero_map():
  frame = np.full((70, 70, 3), 200, np.uint8)
  got = visualize.attention_overlay(frame, one_hot(1, 5))  # cell rows 10-20, cols 50-60
  assert got[15, 55].tolist() == [200, 200, 200]  # the cell centre keeps the frame
  assert got[:, :35].max() == 0 and got[40:].max() == 0  # far from the cell: black
  assert visualize.attention_overlay(frame, np.zeros((K, K))).max() == 0
  with pytest.raises(ValueError, match='uint8'):
    visualize.attention_overlay(frame.astype(np.float32), one_hot(0, 0))
  with pytest.raises(ValueError, match=r'\(K, K\)'):
    visualize.attention_overlay(frame, np.zeros((K, K, 1)))


# ---------------------------------------------------------------------------------------------
# Attention mass inside a box.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('frame_hw', [(224, 224), (240, 320)])
def test_one_hot_map_puts_all_mass_in_its_cell(frame_hw):
  height, width = frame_hw
  row, col = 2, 5
  box = (col * width / K, row * height / K, (col + 1) * width / K, (row + 1) * height / K)
  assert visualize.attention_mass_in_box(one_hot(row, col), box, frame_hw) == pytest.approx(1.0)
  other = (0, 0, width / K, height / K)
  assert visualize.attention_mass_in_box(one_hot(row, col), other, frame_hw) == 0.0


def test_bilinear_one_hot_spreads_as_a_tent():
  # A one-hot cell resized bilinearly is a tent one cell wide each side: 0.75 of its 1-D mass
  # stays within the cell, so 0.75**2 in 2-D (interior cell, frame a multiple of K).
  size = 32 * K
  box = (3 * 32, 3 * 32, 4 * 32, 4 * 32)
  mass = visualize.attention_mass_in_box(one_hot(3, 3), box, (size, size), upsample='bilinear')
  assert mass == pytest.approx(0.75 ** 2, abs=2e-3)


def test_uniform_map_gives_box_area_fraction():
  rng = np.random.default_rng(1)
  frame_hw = (240, 320)
  assert visualize.box_area_fraction((10, 20, 110, 70), (100, 200)) == pytest.approx(0.25)
  for _ in range(5):
    x0, x1 = np.sort(rng.uniform(0, 320, 2))
    y0, y1 = np.sort(rng.uniform(0, 240, 2))
    box = (x0, y0, x1 + 2, y1 + 2)
    chance = visualize.box_area_fraction(box, frame_hw)
    for mode in visualize.UPSAMPLE_MODES:
      mass = visualize.attention_mass_in_box(np.full((K, K), 1 / K ** 2), box, frame_hw, mode)
      assert mass == pytest.approx(chance, abs=1e-6)


def test_box_errors():
  with pytest.raises(ValueError, match='x1 > x0'):
    visualize.box_area_fraction((10, 10, 5, 20), (100, 100))
  with pytest.raises(ValueError, match='covers no pixel'):
    visualize.box_area_fraction((200, 200, 300, 300), (100, 100))
  with pytest.raises(ValueError, match='no positive mass'):
    visualize.attention_mass_in_box(np.zeros((K, K)), (0, 0, 10, 10), (100, 100))


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------
def test_plot_attention_maps_real_frames(tmp_path, real_frames):
  maps = np.stack([one_hot(1, 1), one_hot(3, 3), np.full((K, K), 1 / K ** 2)])
  path = visualize.plot_attention_maps(real_frames, maps, tmp_path / 'fig7.png',
                                       titles=['a', 'b', 'uniform'])
  image = read_png(path)
  aspect = real_frames.shape[1] / real_frames.shape[2]
  assert image.shape[:2] == (
      panel_pixels(2 * visualize.PANEL_INCHES * aspect + visualize.TITLE_INCHES),
      panel_pixels(3 * visualize.PANEL_INCHES))
  assert image.std() > MIN_PIXEL_STD
  # The uniform map's overlay (bottom right panel) equals its frame; the one-hot ones are darker.
  half = image.shape[0] // 2
  third = image.shape[1] // 3
  top, bottom = image[:half].astype(float), image[half:].astype(float)
  assert bottom[:, :third].mean() < top[:, :third].mean() - 20
  assert abs(bottom[:, 2 * third:].mean() - top[:, 2 * third:].mean()) < 10


def test_plot_attention_maps_wraps_rows(tmp_path):
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, (10, 32, 32, 6), dtype=np.uint8)  # RGB snippets: first frame
  maps = rng.dirichlet(np.ones(K * K), size=10).reshape(10, K, K)
  image = read_png(visualize.plot_attention_maps(frames, maps, tmp_path / 'grid.png'))
  rows, columns = 2, visualize.MAX_COLUMNS
  assert image.shape[:2] == (
      panel_pixels(rows * (2 * visualize.PANEL_INCHES + visualize.TITLE_INCHES)),
      panel_pixels(columns * visualize.PANEL_INCHES))
  with pytest.raises(ValueError, match='N = 10'):
    visualize.plot_attention_maps(frames, maps[:3], tmp_path / 'bad.png')


def _orange_pixels(image):
  return int(np.sum(np.all(np.abs(image.astype(int) - ORANGE) < 30, axis=-1)))


def test_plot_segment_confidence(tmp_path):
  rng = np.random.default_rng(3)
  segments = 10
  alpha = rng.uniform(0.5, 3.0, segments)
  frames = rng.integers(0, 256, (segments, 24, 32, 3), dtype=np.uint8)
  predictions = rng.integers(0, 3, segments)
  width = panel_pixels(max(visualize.MIN_FIGURE_INCHES, segments * visualize.SEGMENT_INCHES))
  images = {}
  for top in (3, 6):
    mask = np.zeros(segments)
    mask[np.argsort(-alpha)[:top]] = 1
    path = visualize.plot_segment_confidence(
        alpha, mask, tmp_path / f'fig2_top{top}.png', class_names=['Biking', 'LongJump', 'Run'],
        predictions=predictions, frames=frames, title='v_Biking_g01_c01: label Biking')
    images[top] = read_png(path)
    assert images[top].shape[1] == width
    assert images[top].shape[0] > panel_pixels(visualize.BAR_PANEL_INCHES)
    assert images[top].std() > MIN_PIXEL_STD
  assert _orange_pixels(images[6]) > _orange_pixels(images[3]) > 0
  plain = read_png(visualize.plot_segment_confidence(alpha, mask, tmp_path / 'plain.png'))
  assert plain.shape[:2] == (panel_pixels(visualize.BAR_PANEL_INCHES), width)
  with pytest.raises(ValueError, match=r'\(S,\)'):
    visualize.plot_segment_confidence(alpha, mask[:3], tmp_path / 'bad.png')


def sweep_results():
  rows = []
  for top, dcw, ave in ((1, 0.851, 0.845), (3, 0.862, 0.850), (6, 0.861, 0.848), (9, 0.853, 0.847)):
    rows.append({'row': 'TS(9, top_n)', 'top': top, 'accuracy_dcw': dcw, 'accuracy_ave': ave})
  for top, dcw in ((1, 0.866), (2, 0.860), (3, 0.857)):
    rows.append({'row': 'TS(3x3, 3 x top_m)', 'top': top, 'accuracy_dcw': dcw})
  return rows


def test_plot_topn_sweep(tmp_path):
  image = read_png(visualize.plot_topn_sweep(sweep_results(), tmp_path / 'fig6.png'))
  width, height = visualize.SWEEP_PANEL_INCHES
  assert image.shape[:2] == (panel_pixels(height), panel_pixels(2 * width))
  assert image.std() > MIN_PIXEL_STD
  with pytest.raises(ValueError, match='accuracy_dcw'):
    visualize.plot_topn_sweep([{'row': 'TS(9, top_n)', 'top': 1}], tmp_path / 'bad.png')


def test_cli_draws_figures_from_eval_scores(tmp_path):
  rng = np.random.default_rng(4)
  videos, segments, classes = 2, 6, 5
  probs = rng.dirichlet(np.ones(classes) * 0.3, size=(videos, segments)).astype(np.float32)
  scores = tmp_path / 'eval_scores.npz'
  np.savez(scores, video_id=np.array(['v_a', 'v_b']), label=np.array([0, 3]),
           segment_probs=probs, dcw=probs.mean(1), ave=probs.mean(1),
           classes=np.array(['c0', 'c1', 'c2', 'c3', 'c4']),
           frames=rng.integers(0, 256, (videos, segments, 32, 32, 6), dtype=np.uint8),
           attention=rng.dirichlet(np.ones(4), size=(videos, segments)).reshape(
               videos, segments, 2, 2))
  sweep = tmp_path / 'sweep.json'
  sweep.write_text(json.dumps(sweep_results()))
  out = tmp_path / 'figs'
  proc = subprocess.run([sys.executable, '-m', 'sta_cnn_jax.visualize', f'--scores={scores}',
                         f'--sweep={sweep}', f'--out={out}'], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = sorted(p.name for p in out.iterdir())
  assert names == ['attention_000.png', 'attention_001.png', 'segment_confidence_000.png',
                   'segment_confidence_001.png', 'topn_sweep.png']
  for name in names:
    assert read_png(out / name).std() > MIN_PIXEL_STD
  with pytest.raises(ValueError, match='sweep.json'):
    visualize.figures_from_scores(sweep, out)
