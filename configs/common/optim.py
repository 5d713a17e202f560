"""Optimizer (LazyConfig): Adam, lr 1e-4, weight decay 1e-4 (the seed report's recipe).

``params.model`` is filled in by tools/train_net.py.
"""
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

optimizer = L(torch.optim.Adam)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=1e-4,
    weight_decay=1e-4,
)
