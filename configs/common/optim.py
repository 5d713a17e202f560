"""Optimizer (LazyConfig): Adam, lr 1e-4, weight decay 1e-4 (the seed report's recipe).

``params.model`` is filled in by tools/train_net.py. ``fused=True``: one kernel for all
parameters (on CPU and CUDA). On a CPU, PyTorch's default is one small op per parameter and
step; measured on the 2-core AMD EPYC, 1 thread, per step: UNeXt 13.9 -> 3.0 ms, the small
Mask DINO 18.4 -> 3.1 ms.
"""
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

optimizer = L(torch.optim.Adam)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=1e-4,
    weight_decay=1e-4,
    fused=True,
)
