"""UNeXt on the embedded demo dataset (``make demo``): the unext.py recipe with a schedule
that fits ~10 minutes on a 2-core CPU. Model selection uses the demo val split only; the
test split is evaluated once, at the end."""
from .unext import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset.names = "lgg_demo_train"
dataloader.val.dataset.names = "lgg_demo_val"
dataloader.test.dataset.names = "lgg_demo_test"
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1
dataloader.val.num_workers = 1
dataloader.test.num_workers = 1

# statistics of the demo images (tools: mean/std over every 5th slice)
model.pixel_mean = [56.8, 44.7, 62.2]
model.pixel_std = [70.1, 53.0, 73.5]

optimizer.lr = 1e-3
train.output_dir = "./output/demo_unext"
train.max_iter = 1500
train.eval_period = 250
train.checkpointer.period = 250
train.log_period = 50
