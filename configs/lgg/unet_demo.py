"""UNet on the embedded demo dataset, for the CPU comparison study (``make compare``): the
unext_demo.py data, 128x128 resolution and optimiser, with a slim UNet (base width 16, 1.94 M
parameters, about the size of UNeXt) and a shorter schedule, since one iteration costs about
four of UNeXt's on a CPU."""
from detectron2.config import LazyCall as L

from brainseg.modeling import UNet

from .unext_demo import dataloader, lr_multiplier, model, optimizer, train

model.net = L(UNet)(in_channels=3, out_channels=1, base_channels=16)

train.output_dir = "./output/demo_unet"
train.max_iter = 250
train.eval_period = 50
train.checkpointer.period = 50
train.log_period = 25
