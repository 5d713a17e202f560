"""ResUNet on the embedded demo dataset, for the CPU comparison study (``make compare``): the
unet_demo.py data, 128x128 resolution, optimiser and short schedule, with a slim ResUNet (base
width 16, 0.52 M parameters)."""
from detectron2.config import LazyCall as L

from brainseg.modeling import ResUNet

from .unet_demo import dataloader, lr_multiplier, model, optimizer, train

model.net = L(ResUNet)(in_channels=3, out_channels=1, base_channels=16)

train.output_dir = "./output/demo_resunet"
