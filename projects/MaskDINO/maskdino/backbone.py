"""ResNet backbones for Mask DINO built from detectron2's ResNet pieces (random init)."""

from typing import Sequence

import torch.nn.functional as F
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from brainseg.layers import max_pool2d

__all__ = ["build_resnet"]

_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


class _Stem(BasicStem):
    """detectron2's stem (7x7/2 conv, norm, ReLU, 3x3/2 max pool) with the pooling on
    :func:`brainseg.layers.max_pool2d` (same values; the NCHW CPU pooling's forward and backward
    were ~3 % of a CPU training step of the small Mask DINO)."""

    def forward(self, x):
        return max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


def build_resnet(
    *,
    depth: int = 50,
    width: int = 64,
    in_channels: int = 3,
    norm: str = "BN",
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    freeze_at: int = 0,
) -> ResNet:
    """A detectron2 :class:`ResNet` of a given depth and width.

    ``depth=50, width=64`` is the standard R50; ``depth=18, width=32`` a half-width R18 that
    trains on a CPU. Stage ``i`` (res2..res5) has ``width * 2**i`` channels for basic blocks
    (depth < 50) and four times that for bottleneck blocks.

    Args:
        depth: one of 18, 34, 50, 101.
        width: channels of the stem and of the first stage's (bottleneck) convolutions.
        in_channels: image channels.
        norm: detectron2 norm name ("BN", "SyncBN", "GN", "FrozenBN", ...).
        out_features: which of "stem", "res2".."res5" to return.
        freeze_at: number of leading stages to freeze (0 = train everything, from scratch).

    Returns:
        The backbone; ``output_shape()`` gives channels and strides of ``out_features``.
    """
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"build_resnet: depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    stem = _Stem(in_channels=in_channels, out_channels=width, norm=norm)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    stages = []
    stage_in = width
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        stage_out = width * expansion * 2**index
        extra = {"bottleneck_channels": stage_out // 4} if bottleneck else {}
        stages.append(
            ResNet.make_stage(
                block_class=BottleneckBlock if bottleneck else BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[1 if index == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=stage_in,
                out_channels=stage_out,
                norm=norm,
                **extra,
            )
        )
        stage_in = stage_out
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
