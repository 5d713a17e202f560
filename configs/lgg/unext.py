"""UNeXt (Valanarasu & Patel, MICCAI 2022) on LGG at the paper's widths (1.47 M parameters),
BCE + Dice loss (0.5 BCE + (1 - soft Dice)), Adam 1e-4 with cosine decay to 1e-5."""
from detectron2.config import LazyCall as L

from brainseg.modeling import UNeXt

from ..common.data import dataloader
from ..common.optim import optimizer
from ..common.schedule import lr_multiplier
from ..common.semantic import model
from ..common.train import train

model.net = L(UNeXt)(in_channels=3, out_channels=1)
train.output_dir = "./output/lgg_unext"
