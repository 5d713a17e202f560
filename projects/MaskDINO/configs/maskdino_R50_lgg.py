"""Mask DINO, R50 backbone (from scratch), on LGG: the full model for GPUs.

4 feature levels (res3-res5 + one downsampled), 6 encoder and 6 decoder layers, hidden 256,
300 queries, 100 denoising queries; AdamW 1e-4, the whole model's gradient norm clipped at
0.01 as in the paper. Train with
``tools/train_net.py --config-file projects/MaskDINO/configs/maskdino_R50_lgg.py``.
"""

import torch

from brainseg.model_zoo import get_config

from .common.maskdino_r50 import model

dataloader = get_config("common/data.py").dataloader
optimizer = get_config("common/optim.py").optimizer
lr_multiplier = get_config("common/schedule.py").lr_multiplier
train = get_config("common/train.py").train

optimizer.lr = 1e-4
optimizer.weight_decay = 0.05
optimizer._target_ = torch.optim.AdamW

dataloader.train.total_batch_size = 16
train.clip_grad_norm = 0.01
train.max_iter = 20000
train.eval_period = 1000
train.checkpointer.period = 1000
train.output_dir = "./output/maskdino_R50_lgg"
