"""Learning-rate multiplier (LazyConfig): short linear warm-up, then cosine from 1 to 0.1
(lr 1e-4 -> 1e-5 with the baseline optimizer, the seed report's recipe)."""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.1),
    warmup_length=0.01,
    warmup_factor=0.1,
)
