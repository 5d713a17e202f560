"""ResUNet (deep residual U-Net, Zhang et al. 2018) on LGG, BCE + Dice loss."""
from detectron2.config import LazyCall as L

from brainseg.modeling import ResUNet

from ..common.data import dataloader
from ..common.optim import optimizer
from ..common.schedule import lr_multiplier
from ..common.semantic import model
from ..common.train import train

model.net = L(ResUNet)(in_channels=3, out_channels=1)
train.output_dir = "./output/lgg_resunet"
