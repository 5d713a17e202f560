"""BrainSegTrainer's gradient-norm clipping, on a model whose gradient is known exactly."""
import itertools

import pytest
import torch
from torch import nn

from brainseg.engine import BrainSegTrainer

GRADIENT = torch.tensor([3.0, 4.0, 0.0])  # global L2 norm 5


class LinearLoss(nn.Module):
    """loss = <w, GRADIENT>, so d loss / d w = GRADIENT whatever w is."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, batch):
        return {"loss_linear": (self.w * GRADIENT).sum()}


def _one_sgd_step(clip_grad_norm):
    model = LinearLoss()
    trainer = BrainSegTrainer(
        model, itertools.repeat([{}]), torch.optim.SGD(model.parameters(), lr=1.0), clip_grad_norm=clip_grad_norm
    )
    trainer.train(0, 1)
    return model.w.detach(), trainer.storage


def test_clipping_rescales_the_global_norm_and_logs_the_norm_before_clipping():
    w, storage = _one_sgd_step(clip_grad_norm=1.0)
    torch.testing.assert_close(w, torch.tensor([-0.6, -0.8, 0.0]))
    assert storage.history("grad_norm").latest() == pytest.approx(5.0)


def test_a_norm_below_the_limit_is_left_alone_and_no_limit_means_no_clipping():
    torch.testing.assert_close(_one_sgd_step(clip_grad_norm=10.0)[0], -GRADIENT)
    w, storage = _one_sgd_step(clip_grad_norm=None)
    torch.testing.assert_close(w, -GRADIENT)
    assert "grad_norm" not in storage.histories()


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_a_non_positive_limit_is_refused_by_name(bad):
    model = LinearLoss()
    with pytest.raises(ValueError, match="train.clip_grad_norm"):
        BrainSegTrainer(model, [], torch.optim.SGD(model.parameters(), lr=1.0), clip_grad_norm=bad)
