"""Training-loop settings (LazyConfig), read by tools/train_net.py: brainseg's defaults, each
documented in :mod:`brainseg.engine.defaults`. Edit fields in a model config, e.g.
``train.max_iter = 2000``, or on the command line: ``train.max_iter=2000``."""
import copy

from brainseg.engine.defaults import TRAIN_DEFAULTS as _TRAIN_DEFAULTS

train = copy.deepcopy(_TRAIN_DEFAULTS)
