"""brainseg.layers.max_pool2d: same values, indices and gradients as F.max_pool2d."""
import pytest
import torch
import torch.nn.functional as F

from brainseg.layers import max_pool2d

POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), ((3, 2), (2, 1), (1, 0))]


def _pool_pair(x: torch.Tensor, kernel_size, stride, padding):
    """Output and input gradient of both implementations for the same upstream gradient."""
    weight = torch.randn_like(F.max_pool2d(x, kernel_size, stride, padding))
    results = []
    for pool in (max_pool2d, F.max_pool2d):
        leaf = x.detach().clone().requires_grad_()
        out = pool(leaf, kernel_size, stride, padding)
        (out * weight).sum().backward()
        results.append((out.detach(), leaf.grad))
    return results


@pytest.mark.parametrize("kernel_size,stride,padding", POOLS)
def test_matches_f_max_pool2d_exactly(kernel_size, stride, padding):
    torch.manual_seed(0)
    # odd spatial size, and a ReLU so that many windows tie at 0: the gradient must go to the
    # same element of a tie as F.max_pool2d sends it
    x = torch.relu(torch.randn(2, 5, 13, 10))
    (ours, our_grad), (ref, ref_grad) = _pool_pair(x, kernel_size, stride, padding)
    assert ours.shape == ref.shape and ours.is_contiguous()
    assert torch.equal(ours, ref)
    assert torch.equal(our_grad, ref_grad)
    assert (x == 0).float().mean() > 0.3  # the ties really occur


def test_gradcheck_double():
    torch.manual_seed(1)
    # distinct values (a permutation) so that the numerical derivative sees no ties
    x = (torch.randperm(2 * 3 * 7 * 6).double().reshape(2, 3, 7, 6) / 10).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: max_pool2d(t, 3, 2, 1), (x,))


def test_other_layouts_take_the_stock_path():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 9, 9)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(max_pool2d(channels_last, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    transposed = x.transpose(2, 3)
    assert torch.equal(max_pool2d(transposed, 2, 2), F.max_pool2d(transposed, 2, 2))
