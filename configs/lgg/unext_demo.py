"""UNeXt on the embedded demo dataset (``make demo``): the unext.py recipe with a schedule
that fits a 2-core CPU in about 10 minutes. To save compute the net runs on slices resized to
128x128; predictions are resized back and every metric is computed at the original 256x256.
Model selection uses the demo val split only; the test split is evaluated once, at the end."""
from brainseg.data import build_lgg_test_augmentations
from brainseg.data.statistics import LGG_DEMO_PIXEL_MEAN, LGG_DEMO_PIXEL_STD

from .unext import dataloader, lr_multiplier, model, optimizer, train

RESOLUTION = 128

dataloader.train.dataset.names = "lgg_demo_train"
dataloader.val.dataset.names = "lgg_demo_val"
dataloader.test.dataset.names = "lgg_demo_test"
dataloader.train.mapper.augmentations.resize_to = RESOLUTION
# patients differ in overall brightness and contrast (as scanners do): augment them widely
dataloader.train.mapper.augmentations.brightness = (0.7, 1.3)
dataloader.train.mapper.augmentations.contrast = (0.7, 1.3)
for split in ("val", "test"):
    dataloader[split].mapper.augmentations = build_lgg_test_augmentations(resize_to=RESOLUTION)
for split in ("train", "val", "test"):
    dataloader[split].num_workers = 1
dataloader.train.total_batch_size = 8

model.pixel_mean = list(LGG_DEMO_PIXEL_MEAN)
model.pixel_std = list(LGG_DEMO_PIXEL_STD)

optimizer.lr = 1e-3
train.output_dir = "./output/demo_unext"
train.max_iter = 1000
train.eval_period = 200
train.checkpointer.period = 200
train.log_period = 50
