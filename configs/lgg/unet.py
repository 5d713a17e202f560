"""UNet (Ronneberger et al. 2015) on LGG: 64 -> 1024 filters, BCE + Dice loss."""
from detectron2.config import LazyCall as L

from brainseg.modeling import UNet

from ..common.data import dataloader
from ..common.optim import optimizer
from ..common.schedule import lr_multiplier
from ..common.semantic import model
from ..common.train import train

model.net = L(UNet)(in_channels=3, out_channels=1, base_channels=64)
train.output_dir = "./output/lgg_unet"
