r"""A small synthetic action dataset in the exact UCF101 on-disk layout.

    python -m data_prep.synthetic --out=DIR [--num_classes=6 --videos_per_class=12
        --test_per_class=4 --frames=48 --size=128x96 --seed=0 --object_fraction=0.15
        --evidence_fraction=0.3]

writes
    DIR/videos/<Class>/v_<Class>_gXX_cYY.avi      (MJPG AVI, decodes reliably with OpenCV)
    DIR/splits/classInd.txt, trainlist01.txt, testlist01.txt   (CRLF, as the official files)
    DIR/boxes.json                                 (the object's box in every frame, or null)

What a video shows (designed so that both the spatial and the temporal attention matter, and
not tuned towards any model):
  * Class evidence: one small object (`OBJECT_FRACTION` of the frame height) whose APPEARANCE
    (shape + two-colour stripe texture) and MOTION (straight-line direction) identify the class.
    Classes come in pairs with the same appearance and different motions, so a pair can only be
    told apart by motion: even pairs Rising / Falling (up or down, with a random sideways
    component), odd pairs Horizontal / Vertical (either way along the axis).
  * Every class is its own mirror image: its set of directions is closed under a horizontal
    flip (angle θ -> 180° - θ), so TSN's flip augmentation (which mirrors the frames and negates
    flow x) never turns one class's video into another's. A class "moves right" would be
    mirrored into "moves left" under the same label.
  * Temporal: the object is visible only in one window of `EVIDENCE_FRACTION` of the frames at
    a random position; the other frames show only the shared distractors.
  * Spatial: the object sits in clutter — a textured background with small static patches
    (one scene per group number, shared by that group's clips of EVERY class: a scene, like a
    UCF101 group, recurs across clips, but it carries no class information) that pans slowly
    (random camera motion, which warped flow removes), and
    `NUM_DISTRACTORS` solid shapes of random colours moving and bouncing at random; all drawn
    from the same distributions for every class.
  * Sensor noise: Gaussian, σ = `NOISE_STD` grey levels, then MJPG compression.
Train videos use groups after the test groups (UCF101 split 1 also keeps groups disjoint).
Everything is a function of --seed (each video has its own generator seeded by
(seed, class, group, clip)), so the output is deterministic.

boxes.json: {"frame_size": [H, W], "classes": [...], "videos": {video_id: {"label", "class",
"split", "evidence_frames": [start, stop), "boxes": [[x0, y0, x1, y1] | null per frame]}}} in
source-frame pixels (x1, y1 exclusive). `sta_cnn_jax.mechanism.load_ground_truth(path,
frame_size)` reads them, rescaled to the prepared frame size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Sequence

import cv2
import numpy as np
from absl import app
from absl import flags

VIDEOS_DIR = "videos"
SPLITS_DIR = "splits"
BOXES_FILE = "boxes.json"
CLASS_INDEX = "classInd.txt"
TRAIN_LIST = "trainlist01.txt"
TEST_LIST = "testlist01.txt"
CRLF = "\r\n"  # official UCF101 split files use CRLF
FOURCC = "MJPG"
FPS = 25.0  # UCF101 clips are 25 fps
CLIPS_PER_GROUP = 4  # UCF101 groups hold 4-7 clips

# Defaults: small enough for the demo to prepare in seconds on 2 cores.
DEFAULT_NUM_CLASSES = 6
DEFAULT_VIDEOS_PER_CLASS = 12
DEFAULT_TEST_PER_CLASS = 4
DEFAULT_FRAMES = 48
DEFAULT_SIZE = (128, 96)  # (W, H) source frames

# Scene parameters (relative to the frame so other sizes look alike).
OBJECT_FRACTION = 0.15  # object side / frame height
OBJECT_SPEED = 0.016  # object speed / frame width, per frame (2 px at 128 wide)
SPEED_JITTER = 0.2  # per-video speed factor in [1 - j, 1 + j]
EVIDENCE_FRACTION = 0.3  # fraction of the frames showing the object
STRIPE_PERIOD = 4  # px, diagonal stripes of the object texture
NUM_DISTRACTORS = 5
DISTRACTOR_SPEED = 0.02  # max distractor speed / frame width, per frame
PAN_SPEED = 0.004  # max camera pan speed / frame width, per frame
BACKGROUND_CELLS = 8  # low-frequency background texture: cells across the frame
BACKGROUND_CONTRAST = 60.0  # grey levels of the texture around its mean
BACKGROUND_PATCHES_PER_PIXEL = 1 / 64  # density of static sharp-edged background patches
BACKGROUND_PATCH_SIZE = 8.0  # px, largest patch side
NOISE_STD = 3.0
SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16-px coordinates
FIXED_POINT = 1 << SUBPIXEL_SHIFT

# (name, shape, stripe colour A, stripe colour B) in RGB; one appearance per class pair.
APPEARANCES = (
    ("RedDisc", "disc", (230, 40, 40), (250, 220, 40)),
    ("BlueSquare", "square", (40, 70, 230), (240, 240, 240)),
    ("GreenTriangle", "triangle", (40, 200, 60), (20, 20, 20)),
    ("MagentaDiamond", "diamond", (220, 40, 220), (40, 230, 230)),
    ("OrangeCross", "cross", (250, 140, 20), (30, 60, 200)),
    ("WhiteHexagon", "hexagon", (245, 245, 245), (200, 30, 30)),
    ("CyanStar", "star", (40, 220, 230), (120, 20, 120)),
    ("YellowRing", "ring", (240, 230, 40), (30, 120, 30)),
)
# Motions: name -> direction ranges (centre degrees, half width); 0 = right, 90 = up (image y
# points down). A video picks one range at random, then a direction uniformly inside it. Each
# set of ranges is mirror-symmetric (θ -> 180° - θ), see the module doc.
MOTIONS = {
    "Rising": ((90, 30),),
    "Falling": ((270, 30),),
    "Horizontal": ((0, 15), (180, 15)),
    "Vertical": ((90, 15), (270, 15)),
}
# Class pair k (appearance k) uses these two motions, alternating with k.
PAIR_MOTIONS = (("Rising", "Falling"), ("Horizontal", "Vertical"))


@dataclasses.dataclass(frozen=True)
class ClassSpec:
  name: str
  appearance: tuple
  motion: str  # a key of MOTIONS

  @property
  def direction_ranges(self) -> tuple[tuple[int, int], ...]:
    return MOTIONS[self.motion]


def class_specs(num_classes: int) -> list[ClassSpec]:
  """Class c: appearance c // 2, motion PAIR_MOTIONS[(c // 2) % 2][c % 2]."""
  if not 2 <= num_classes <= 2 * len(APPEARANCES):
    raise ValueError(f"num_classes must be in 2..{2 * len(APPEARANCES)}, got {num_classes}")
  specs = []
  for c in range(num_classes):
    appearance = APPEARANCES[c // 2]
    motion = PAIR_MOTIONS[(c // 2) % len(PAIR_MOTIONS)][c % 2]
    specs.append(ClassSpec(appearance[0] + motion, appearance, motion))
  return specs


def sample_direction(spec: ClassSpec, rng: np.random.Generator) -> float:
  """A direction in degrees drawn from the class's motion (one range, then uniform in it)."""
  centre, half = spec.direction_ranges[int(rng.integers(len(spec.direction_ranges)))]
  return float(centre + rng.uniform(-half, half))


# ----------------------------------------------------------------------------------------------
# Drawing


def _shape_points(shape: str, size: int) -> list[np.ndarray]:
  """Polygons (in a size × size box) of a shape; discs/rings are drawn separately."""
  c, r = size / 2, size / 2 - 0.5
  def regular(n, radius, phase):
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([c + radius * np.cos(a), c - radius * np.sin(a)], -1)
  if shape == "square":
    return [regular(4, r * math.sqrt(2) * 0.95, np.pi / 4)]
  if shape == "triangle":
    return [regular(3, r, np.pi / 2)]
  if shape == "diamond":
    return [regular(4, r, 0.0)]
  if shape == "hexagon":
    return [regular(6, r, 0.0)]
  if shape == "star":
    outer, inner = regular(5, r, np.pi / 2), regular(5, r * 0.45, np.pi / 2 + np.pi / 5)
    return [np.stack([outer, inner], 1).reshape(-1, 2)]
  if shape == "cross":
    w = r / 2.5
    return [np.array([[c - w, 0.5], [c + w, 0.5], [c + w, size - 0.5], [c - w, size - 0.5]]),
            np.array([[0.5, c - w], [size - 0.5, c - w], [size - 0.5, c + w], [0.5, c + w]])]
  raise ValueError(shape)


def object_sprite(appearance: tuple, size: int) -> tuple[np.ndarray, np.ndarray]:
  """The object's (size, size, 3) float RGB texture and (size, size) alpha in [0, 1]."""
  _, shape, colour_a, colour_b = appearance
  mask = np.zeros((size, size), np.uint8)
  centre = (size * FIXED_POINT // 2,) * 2
  radius = int((size / 2 - 0.5) * FIXED_POINT)
  if shape in ("disc", "ring"):
    cv2.circle(mask, centre, radius, 255, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
    if shape == "ring":
      cv2.circle(mask, centre, radius // 2, 0, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
  else:
    polygons = [np.round(p * FIXED_POINT).astype(np.int32) for p in _shape_points(shape, size)]
    cv2.fillPoly(mask, polygons, 255, cv2.LINE_AA, SUBPIXEL_SHIFT)
  y, x = np.mgrid[:size, :size]
  stripes = ((x + y) // (STRIPE_PERIOD // 2)) % 2 == 0
  texture = np.where(stripes[..., None], colour_a, colour_b).astype(np.float32)
  return texture, mask.astype(np.float32) / 255


def _translate(image: np.ndarray, dx: float, dy: float, width: int, height: int) -> np.ndarray:
  matrix = np.float32([[1, 0, dx], [0, 1, dy]])
  return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def background_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A random colour texture, (height, width, 3) float32, larger than a frame (for panning)."""
  cells = rng.uniform(-1, 1, (BACKGROUND_CELLS, BACKGROUND_CELLS, 3)).astype(np.float32)
  smooth = cv2.resize(cells, (width, height), interpolation=cv2.INTER_CUBIC)
  fine = cv2.resize(rng.uniform(-1, 1, (height // 4, width // 4, 3)).astype(np.float32),
                    (width, height), interpolation=cv2.INTER_LINEAR)
  mean = rng.uniform(70, 150, 3).astype(np.float32)
  texture = mean + BACKGROUND_CONTRAST * (0.7 * smooth + 0.3 * fine)
  # Static scene structure (sharp-edged patches that pan with the camera): gives the corners a
  # camera-motion estimate needs, as real scenes do.
  for _ in range(round(BACKGROUND_PATCHES_PER_PIXEL * width * height)):
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    w, h = rng.uniform(2, BACKGROUND_PATCH_SIZE, 2)
    colour = tuple(float(c) for c in mean + rng.uniform(-1, 1, 3) * BACKGROUND_CONTRAST)
    cv2.rectangle(texture, (int(x), int(y)), (int(x + w), int(y + h)), colour, -1)
  return texture


@dataclasses.dataclass(frozen=True)
class _Distractor:
  shape: str
  colour: tuple
  size: tuple[float, float]
  start: tuple[float, float]
  velocity: tuple[float, float]


def _distractors(rng: np.random.Generator, width: int, height: int,
                 object_size: int) -> list[_Distractor]:
  out = []
  for _ in range(NUM_DISTRACTORS):
    size = tuple(rng.uniform(0.6, 1.6, 2) * object_size)
    speed = rng.uniform(0, DISTRACTOR_SPEED * width)
    angle = rng.uniform(0, 2 * np.pi)
    out.append(_Distractor(str(rng.choice(["ellipse", "rectangle"])),
                           tuple(int(v) for v in rng.integers(0, 256, 3)), size,
                           (rng.uniform(0, width), rng.uniform(0, height)),
                           (speed * np.cos(angle), speed * np.sin(angle))))
  return out


def _bounce(start: float, velocity: float, t: int, low: float, high: float) -> float:
  """Position after t steps of constant speed, reflecting at [low, high]."""
  span = high - low
  p = (start - low + velocity * t) % (2 * span)
  return low + (p if p <= span else 2 * span - p)


def _draw_distractor(frame: np.ndarray, d: _Distractor, t: int) -> None:
  height, width = frame.shape[:2]
  cx = _bounce(d.start[0], d.velocity[0], t, 0, width)
  cy = _bounce(d.start[1], d.velocity[1], t, 0, height)
  centre = (int(cx * FIXED_POINT), int(cy * FIXED_POINT))
  half = (int(d.size[0] / 2 * FIXED_POINT), int(d.size[1] / 2 * FIXED_POINT))
  if d.shape == "ellipse":
    cv2.ellipse(frame, centre, half, 0, 0, 360, d.colour, -1, cv2.LINE_AA, SUBPIXEL_SHIFT)
  else:
    cv2.rectangle(frame, (centre[0] - half[0], centre[1] - half[1]),
                  (centre[0] + half[0], centre[1] + half[1]), d.colour, -1, cv2.LINE_AA,
                  SUBPIXEL_SHIFT)


def render_video(spec: ClassSpec, rng: np.random.Generator, frames: int, width: int, height: int,
                 background: np.ndarray, object_fraction: float = OBJECT_FRACTION,
                 evidence_fraction: float = EVIDENCE_FRACTION
                 ) -> tuple[np.ndarray, list, tuple[int, int]]:
  """(frames, H, W, 3) uint8 RGB, per-frame boxes (or None), evidence window [start, stop)."""
  object_size = max(4, round(object_fraction * height))
  length = min(frames, max(2, round(evidence_fraction * frames)))
  start = int(rng.integers(0, frames - length + 1))
  speed = OBJECT_SPEED * width * rng.uniform(1 - SPEED_JITTER, 1 + SPEED_JITTER)
  angle = np.deg2rad(sample_direction(spec, rng))
  velocity = np.array([np.cos(angle), -np.sin(angle)]) * speed  # image y points down
  travel = velocity * (length - 1)
  low = np.maximum(0, -travel)  # top-left corner range keeping the whole path inside
  high = np.array([width, height]) - object_size - np.maximum(0, travel)
  corner0 = rng.uniform(low, np.maximum(low, high))
  pan_speed = rng.uniform(0, PAN_SPEED * width)
  pan_angle = rng.uniform(0, 2 * np.pi)
  pan = np.array([np.cos(pan_angle), np.sin(pan_angle)]) * pan_speed
  margin = np.abs(pan) * frames
  origin = margin  # background crop origin at t = 0 (room to pan either way)
  distractors = _distractors(rng, width, height, object_size)
  texture, alpha = object_sprite(spec.appearance, object_size)
  video, boxes = [], []
  for t in range(frames):
    shift = -(origin + pan * t)
    frame = _translate(background, shift[0], shift[1], width, height)
    for d in distractors:
      _draw_distractor(frame, d, t)
    box = None
    if start <= t < start + length:
      x0, y0 = corner0 + velocity * (t - start)
      layer = _translate(texture, x0, y0, width, height)
      a = _translate(alpha, x0, y0, width, height)[..., None]
      frame = frame * (1 - a) + layer * a
      box = [round(float(x0), 2), round(float(y0), 2), round(float(x0) + object_size, 2),
             round(float(y0) + object_size, 2)]
    frame = frame + rng.normal(0, NOISE_STD, frame.shape)
    video.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    boxes.append(box)
  return np.stack(video), boxes, (start, start + length)


def write_avi(path: pathlib.Path, frames: np.ndarray, fps: float = FPS) -> None:
  """(n, H, W, 3) uint8 RGB → MJPG AVI."""
  path.parent.mkdir(parents=True, exist_ok=True)
  height, width = frames.shape[1:3]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC), fps, (width, height))
  if not writer.isOpened():
    raise OSError(f"cv2.VideoWriter cannot write {path} with fourcc {FOURCC}")
  try:
    for frame in frames:
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  finally:
    writer.release()


# ----------------------------------------------------------------------------------------------
# Dataset


def _video_plan(num_classes: int, videos_per_class: int,
                test_per_class: int) -> list[tuple[int, str, int, int]]:
  """[(class, split, group, clip)]: test groups first (g01, …), then train groups."""
  if not 0 < test_per_class < videos_per_class:
    raise ValueError(f"need 0 < test_per_class ({test_per_class}) < videos_per_class "
                     f"({videos_per_class})")
  test_groups = math.ceil(test_per_class / CLIPS_PER_GROUP)
  plan = []
  for c in range(num_classes):
    for v in range(videos_per_class):
      split = "test" if v < test_per_class else "train"
      k = v if split == "test" else v - test_per_class
      group = k // CLIPS_PER_GROUP + 1 + (0 if split == "test" else test_groups)
      plan.append((c, split, group, k % CLIPS_PER_GROUP + 1))
  return plan


def _write_lines(path: pathlib.Path, lines: Sequence[str]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("".join(line + CRLF for line in lines))


def generate(out_dir: str | pathlib.Path, num_classes: int = DEFAULT_NUM_CLASSES,
             videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
             test_per_class: int = DEFAULT_TEST_PER_CLASS, frames: int = DEFAULT_FRAMES,
             size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
             object_fraction: float = OBJECT_FRACTION,
             evidence_fraction: float = EVIDENCE_FRACTION) -> dict:
  """Writes the dataset under `out_dir` (see module doc); returns the boxes.json dict.

  object_fraction: object side / frame height; evidence_fraction: share of the frames that
  show the object.
  """
  out_dir = pathlib.Path(out_dir)
  width, height = size
  if frames < 2 or width < 16 or height < 16:
    raise ValueError(f"need frames >= 2 and a size of at least 16x16, got {frames}, {size}")
  specs = class_specs(num_classes)
  train_lines, test_lines, videos = [], [], {}
  backgrounds = {}
  for c, split, group, clip in _video_plan(num_classes, videos_per_class, test_per_class):
    spec = specs[c]
    video_id = f"v_{spec.name}_g{group:02d}_c{clip:02d}"
    # One scene per group for all classes. A scene per (class, group) made the background a
    # perfect class cue inside the training set: a network from random weights learnt the
    # scenes, not the object, and predicted one class per held-out group (0/40 validation
    # clips right, 10 classes). Shared scenes leave the object as the only class evidence.
    if group not in backgrounds:
      scene_rng = np.random.default_rng([seed, group])
      pad = math.ceil(PAN_SPEED * width * frames) * 2 + 2
      backgrounds[group] = background_texture(scene_rng, width + pad, height + pad)
    rng = np.random.default_rng([seed, c, group, clip])
    video, boxes, window = render_video(spec, rng, frames, width, height,
                                        backgrounds[group], object_fraction, evidence_fraction)
    write_avi(out_dir / VIDEOS_DIR / spec.name / f"{video_id}.avi", video)
    rel = f"{spec.name}/{video_id}.avi"
    (train_lines.append(f"{rel} {c + 1}") if split == "train" else test_lines.append(rel))
    videos[video_id] = {"label": c, "class": spec.name, "split": split,
                        "evidence_frames": list(window), "boxes": boxes}
  splits = out_dir / SPLITS_DIR
  _write_lines(splits / CLASS_INDEX, [f"{c + 1} {s.name}" for c, s in enumerate(specs)])
  _write_lines(splits / TRAIN_LIST, train_lines)
  _write_lines(splits / TEST_LIST, test_lines)
  boxes = {
      "frame_size": [height, width],
      "box_format": "[x0, y0, x1, y1] in source-frame pixels (x1, y1 exclusive); null = absent",
      "classes": [s.name for s in specs],
      "class_info": [{"name": s.name, "appearance": s.appearance[0], "shape": s.appearance[1],
                      "motion": s.motion, "direction_ranges": [list(r) for r in s.direction_ranges]}
                     for s in specs],
      "params": {"num_classes": num_classes, "videos_per_class": videos_per_class,
                 "test_per_class": test_per_class, "frames": frames, "size": [width, height],
                 "seed": seed, "fps": FPS, "object_fraction": object_fraction,
                 "evidence_fraction": evidence_fraction},
      "videos": videos,
  }
  with open(out_dir / BOXES_FILE, "w", encoding="utf-8") as f:
    json.dump(boxes, f, indent=None, separators=(",", ":"))
  return boxes


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  width, height = (int(v) for v in f.size.lower().split("x"))
  info = generate(f.out, f.num_classes, f.videos_per_class, f.test_per_class, f.frames,
                  (width, height), f.seed, object_fraction=f.object_fraction,
                  evidence_fraction=f.evidence_fraction)
  print(f"wrote {len(info['videos'])} videos of {len(info['classes'])} classes to {f.out}")


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_integer("num_classes", DEFAULT_NUM_CLASSES, "Classes (2..16).")
  flags.DEFINE_integer("videos_per_class", DEFAULT_VIDEOS_PER_CLASS, "Videos per class.")
  flags.DEFINE_integer("test_per_class", DEFAULT_TEST_PER_CLASS, "Of which test videos.")
  flags.DEFINE_integer("frames", DEFAULT_FRAMES, "Frames per video.")
  flags.DEFINE_string("size", "x".join(map(str, DEFAULT_SIZE)), "Source frame size WxH.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_float("object_fraction", OBJECT_FRACTION, "Object side / frame height.")
  flags.DEFINE_float("evidence_fraction", EVIDENCE_FRACTION,
                     "Fraction of the frames that show the object.")
  app.run(main)
