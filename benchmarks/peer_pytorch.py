r"""The PyTorch peer: what a TSN / STA-CNN user would otherwise run (PyTorch eager, CPU).

Optional: needs `torch` (CPU build) and numpy, NOT a project dependency -- run it with its own
virtualenv (python3 -m venv /work/venv-peer && /work/venv-peer/bin/pip install torch numpy).
It imports no JAX and nothing of sta_cnn_jax; its BN-Inception is written out here in PyTorch
(the layer table of docs/design.md "Architecture tables"), so the repository stands alone.

Steps (one JSON line each, same fields as benchmarks/train_step.py):
  tsn        TSN: (B, S) snippets -> logits -> mean over S -> CE (segmental consensus).
  tam        STA-CNN Algorithm 1 as a PyTorch user writes it: per-snippet CE masked to the
             top-`--tam_top` lowest-entropy snippets of each of `--tam_groups` groups, FULL
             backward through every snippet (e.g. TS(3x3,3x1): --segments 9 --tam_top 1
             --tam_groups 3).
  eval       forward of --batch x --segments frames under no_grad.
Training = TSN's recipe in tsn-pytorch: SGD momentum 0.9, weight decay 5e-4, dropout before
fc, gradient-norm clip (40 RGB / 20 flow), partial BN (--partial_bn: every BN but the first in
eval mode with frozen scale/shift), channels-last memory format (oneDNN's fast path).
The input batch is already normalised float32 (a DataLoader's job in PyTorch; our JAX step
normalises uint8 on device inside the step, i.e. does slightly more).

  /work/venv-peer/bin/python benchmarks/peer_pytorch.py --step tam --segments 9 --tam_top 1 \
      --tam_groups 3 --batch 2
  ... --serve     worker for benchmarks/compare.py and benchmarks/conv_layers.py (stdin JSON).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position

# tsn-pytorch defaults: clip_gradient 40 (RGB) / 20 (flow); dropout 0.8 / 0.7.
CLIP = {'rgb': 40.0, 'flow': 20.0}
DROPOUT = {'rgb': 0.8, 'flow': 0.7}
CHANNELS = {'rgb': 3, 'flow': 10}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 1e-3, 0.9, 5e-4
BN_EPS = 1e-5
# Entropy floor as sta_cnn_jax.temporal.MIN_ENTROPY.
MIN_ENTROPY = 1e-6


class ConvBN(nn.Sequential):

  def __init__(self, cin, cout, k, s=1, p=0):
    super().__init__(nn.Conv2d(cin, cout, k, s, p, bias=True), nn.BatchNorm2d(cout, eps=BN_EPS),
                     nn.ReLU(inplace=True))


class Inception(nn.Module):
  """1x1 | 1x1->3x3 | 1x1->3x3->3x3 | pool(->1x1); stride 2 drops the 1x1 and the projection."""

  def __init__(self, cin, c1, c3r, c3, cd3r, cd3, pool, cpool, stride=1):
    super().__init__()
    self.b1 = ConvBN(cin, c1, 1) if c1 else None
    self.b3 = nn.Sequential(ConvBN(cin, c3r, 1), ConvBN(c3r, c3, 3, stride, 1))
    self.bd = nn.Sequential(ConvBN(cin, cd3r, 1), ConvBN(cd3r, cd3, 3, 1, 1),
                            ConvBN(cd3, cd3, 3, stride, 1))
    if stride == 2:
      self.bp = nn.MaxPool2d(3, 2, ceil_mode=True)
    else:
      p = (nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True) if pool == 'avg'
           else nn.MaxPool2d(3, 1, 1, ceil_mode=True))
      self.bp = nn.Sequential(p, ConvBN(cin, cpool, 1))

  def forward(self, x):
    outs = ([self.b1(x)] if self.b1 is not None else []) + [self.b3(x), self.bd(x), self.bp(x)]
    return torch.cat(outs, 1)


class BNInception(nn.Module):
  """docs/design.md "Architecture tables"; 11,295,240 parameters with a 1000-way fc."""

  def __init__(self, num_classes=1000, in_ch=3, dropout=0.8):
    super().__init__()
    self.stem = nn.Sequential(
        ConvBN(in_ch, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
        ConvBN(64, 64, 1), ConvBN(64, 192, 3, 1, 1), nn.MaxPool2d(3, 2, ceil_mode=True))
    i = Inception
    self.blocks = nn.Sequential(
        i(192, 64, 64, 64, 64, 96, 'avg', 32), i(256, 64, 64, 96, 64, 96, 'avg', 64),
        i(320, 0, 128, 160, 64, 96, 'max', 0, 2), i(576, 224, 64, 96, 96, 128, 'avg', 128),
        i(576, 192, 96, 128, 96, 128, 'avg', 128), i(576, 160, 128, 160, 128, 160, 'avg', 128),
        i(608, 96, 128, 192, 160, 192, 'avg', 128), i(608, 0, 128, 192, 192, 256, 'max', 0, 2),
        i(1056, 352, 192, 320, 160, 224, 'avg', 128), i(1024, 352, 192, 320, 192, 224, 'max', 128))
    self.drop = nn.Dropout(dropout)
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x):
    return self.fc(self.drop(self.blocks(self.stem(x)).mean((2, 3))))


def count_flops(model, size, in_ch):
  """Forward FLOPs (2 x multiply-adds) of convs and fc, from hooks (sta_cnn_jax/flops.py's
  convention)."""
  total = [0]

  def conv_hook(m, _, o):
    total[0] += (2 * m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels *
                 o.shape[2] * o.shape[3] // m.groups)

  def fc_hook(m, *_):
    total[0] += 2 * m.in_features * m.out_features

  hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
           if isinstance(m, nn.Conv2d)]
  hooks += [m.register_forward_hook(fc_hook) for m in model.modules() if isinstance(m, nn.Linear)]
  was = model.training
  model.eval()
  with torch.no_grad():
    model(torch.zeros(1, in_ch, size, size))
  for h in hooks:
    h.remove()
  model.train(was)
  return total[0]


def set_partial_bn(model: nn.Module) -> None:
  """tsn-pytorch `partialBN`: every BatchNorm but the first in eval mode, scale/shift frozen."""
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for m in bns[1:]:
    m.eval()
    m.weight.requires_grad_(False)
    m.bias.requires_grad_(False)


def temporal_attention_mask(logits, top, groups):
  """β of Algorithm 1: 1 for the `top` lowest-entropy snippets of each group. logits (B, S, C)."""
  with torch.no_grad():
    p = logits.softmax(-1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    alpha = 1.0 / entropy.clamp_min(MIN_ENTROPY)
    b, s = alpha.shape
    g = alpha.view(b, groups, s // groups)
    mask = torch.zeros_like(g).scatter_(-1, g.topk(top, -1).indices, 1.0)
    return mask.view(b, s)


class Step:
  """One configured training / eval step and its input, ready to time."""

  def __init__(self, step='tsn', mode='rgb', batch=4, segments=3, size=224, classes=101,
               tam_top=1, tam_groups=1, channels_last=True, partial_bn=True, dtype='float32',
               seed=0):
    torch.manual_seed(seed)
    self.step, self.batch, self.segments = step, batch, segments
    self.tam_top, self.tam_groups = tam_top, tam_groups
    self.clip = CLIP[mode]
    cin = CHANNELS[mode]
    self.model = BNInception(classes, cin, DROPOUT[mode])
    self.forward_flops = count_flops(self.model, size, cin)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    self.model = self.model.to(memory_format=fmt)
    self.autocast = dtype == 'bfloat16'
    frames = batch * segments
    self.x = torch.randn(frames, cin, size, size).contiguous(memory_format=fmt)
    self.y = torch.randint(0, classes, (batch,))
    self.model.train(step != 'eval')
    if partial_bn and step != 'eval':
      set_partial_bn(self.model)
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.SGD(self.params, lr=LEARNING_RATE, momentum=MOMENTUM,
                               weight_decay=WEIGHT_DECAY)

  def __call__(self):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.autocast):
      if self.step == 'eval':
        with torch.no_grad():
          self.model(self.x)
        return
      logits = self.model(self.x).float().view(self.batch, self.segments, -1)
      if self.step == 'tam':
        mask = temporal_attention_mask(logits, self.tam_top, self.tam_groups)
        ce = nn.functional.cross_entropy(logits.reshape(self.batch * self.segments, -1),
                                         self.y.repeat_interleave(self.segments),
                                         reduction='none')
        loss = (ce * mask.reshape(-1)).sum() / mask.sum()
      else:
        loss = nn.functional.cross_entropy(logits.mean(1), self.y)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(self.params, self.clip)
    self.opt.step()


# ------------------------------------------------------------------------------------------
# Single convolutions (benchmarks/conv_layers.py's 'torch' variants).
# ------------------------------------------------------------------------------------------


class ConvPasses:
  """Forward, dx and dw of one channels-last conv, timed separately (autograd with output_mask:
  asking for one gradient computes only that one)."""

  def __init__(self, s, batch, dtype):
    dt = getattr(torch, dtype)
    k, st = s['k'], s['stride']
    self.conv = nn.Conv2d(s['cin'], s['cout'], k, st, k // 2).to(
        dtype=dt, memory_format=torch.channels_last)
    self.x = torch.randn(batch, s['cin'], s['hw'], s['hw'], dtype=dt).contiguous(
        memory_format=torch.channels_last).requires_grad_(True)
    self.y = self.conv(self.x)
    self.dy = torch.randn_like(self.y)

  def run(self, pass_):
    if pass_ == 'fwd':
      with torch.no_grad():
        self.conv(self.x)
    elif pass_ == 'dx':
      torch.autograd.grad(self.y, [self.x], self.dy, retain_graph=True)
    else:
      torch.autograd.grad(self.y, [self.conv.weight], self.dy, retain_graph=True)


def serve():
  state = {}

  def conv_setup(shapes, batch, dtype):
    state['convs'] = [ConvPasses(s, batch, dtype) for s in shapes]
    for c in state['convs']:
      for p in ('fwd', 'dx', 'dw'):
        c.run(p)
    return {'compile_s': 0.0, 'torch': torch.__version__, 'threads': torch.get_num_threads()}

  def conv_time(index, pass_, reps):
    c = state['convs'][index]
    return common.time_calls(lambda: c.run(pass_), reps, warmup=1)

  def step_setup(warmup=2, **kwargs):
    state['step'] = step = Step(**kwargs)
    common.time_calls(step, 0, warmup=warmup)
    return {'framework': 'torch', 'version': torch.__version__,
            'threads': torch.get_num_threads(), 'forward_flops': step.forward_flops}

  def step_time(reps):
    return common.time_calls(state['step'], reps)

  def matmul(reps):
    fn, flop = common.matmul_task('torch')
    return {'times': common.time_calls(fn, reps, warmup=1), 'flop': flop}

  common.serve({'setup': conv_setup, 'time': conv_time, 'step_setup': step_setup,
                'step_time': step_time, 'matmul': matmul})


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--step', choices=['tsn', 'tam', 'eval'], default='tsn')
  ap.add_argument('--mode', choices=list(CHANNELS), default='rgb')
  ap.add_argument('--batch', type=int, default=4, help='videos')
  ap.add_argument('--segments', type=int, default=3, help='snippets per video S')
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--classes', type=int, default=101)
  ap.add_argument('--tam_top', type=int, default=1)
  ap.add_argument('--tam_groups', type=int, default=1)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  ap.add_argument('--no_channels_last', action='store_true')
  ap.add_argument('--no_partial_bn', action='store_true')
  ap.add_argument('--threads', type=int, default=torch.get_num_threads())
  ap.add_argument('--serve', action='store_true', help='worker mode (stdin JSON requests)')
  a = ap.parse_args(argv)
  torch.set_num_threads(a.threads)
  if a.serve:
    return serve()
  step = Step(a.step, a.mode, a.batch, a.segments, a.size, a.classes, a.tam_top, a.tam_groups,
              not a.no_channels_last, not a.no_partial_bn, a.dtype)
  times = common.time_calls(step, a.steps, warmup=a.warmup)
  med = common.summary(times)['median_s']
  frames = a.batch * a.segments
  work = step.forward_flops * frames * (1 if a.step == 'eval' else 3)
  mm = common.matmul_gflops('torch')
  common.emit({
      'bench': 'peer_pytorch', 'framework': 'torch', 'version': torch.__version__,
      'step': a.step, 'mode': a.mode, 'dtype': a.dtype, 'batch': a.batch,
      'segments': a.segments, 'size': a.size, 'tam_top': a.tam_top, 'tam_groups': a.tam_groups,
      'threads': a.threads, 'channels_last': not a.no_channels_last,
      'partial_bn': not a.no_partial_bn,
      'clips_per_s': common.rate(a.batch, med, 3), 'frames_per_s': common.rate(frames, med, 3),
      'step_ms_median': round(1e3 * med, 1),
      'gflop_per_frame_fwd': round(step.forward_flops / 1e9, 3),
      'achieved_gflops': common.rate(work / 1e9, med, 1),
      'matmul_gflops': mm['gflops_median'], 'load_avg': common.load_average()})


if __name__ == '__main__':
  main()
