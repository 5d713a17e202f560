"""Tests of BatchNorm folding (brainseg.modeling.fusion) and BrainSegSemantic's fuse_for_inference."""

import pytest
import torch
from torch import nn

from brainseg.modeling import BrainSegSemantic
from brainseg.modeling.fusion import FoldedNetCache, fold_batchnorm, weights_version
from brainseg.modeling.losses import BCEDiceLoss
from brainseg.modeling.nets import ResUNet, UNet, UNeXt

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_NETS = {
    "UNet": lambda: UNet(base_channels=4, depth=3),
    "ResUNet": lambda: ResUNet(base_channels=4, depth=3),
    "UNeXt": lambda: UNeXt(conv_channels=(4, 8, 16), token_channels=(20, 32)),
}
MEAN, STD = [20.0, 25.0, 18.0], [30.0, 35.0, 28.0]


def with_random_statistics(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` with random BN statistics and affine parameters (fresh ones fold to the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return net


def batchnorm_names(net: nn.Module) -> list:
    return [name for name, module in net.named_modules() if isinstance(module, nn.BatchNorm2d)]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_model(**kwargs) -> BrainSegSemantic:
    torch.manual_seed(0)
    net = with_random_statistics(UNeXt(conv_channels=(4, 8, 16), token_channels=(20, 32)))
    return BrainSegSemantic(net=net, loss=BCEDiceLoss(), pixel_mean=MEAN, pixel_std=STD, **kwargs)


def record(seed: int = 0, size: int = 64) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator),
        "sem_seg": torch.randint(0, 2, (size, size), generator=generator),
    }


# ---------------------------------------------------------------- fold_batchnorm


@pytest.mark.parametrize("name", sorted(TINY_NETS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_net_matches_eval_output(name, channels_last):
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = with_random_statistics(TINY_NETS[name]()).to(memory_format=memory_format).eval()
    x = images().contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batchnorm(net)
        got = folded(x)
    assert relative_error(got, expected) <= 1e-5
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=memory_format) for c in convs)


def test_every_batchnorm_after_a_conv_is_folded():
    for name in ("UNet", "UNeXt"):
        net = TINY_NETS[name]()
        assert batchnorm_names(net) and not batchnorm_names(fold_batchnorm(net)), name
    # ResUNet: only the pre-activation norms remain (BN - ReLU - conv on a sum or concatenation,
    # nothing to fold them into): the second encoder unit on, the bridge and the 3 decoders
    net = TINY_NETS["ResUNet"]()
    remaining = batchnorm_names(fold_batchnorm(net))
    assert remaining == [
        "encoders.1.branch.0",
        "encoders.2.branch.0",
        "bridge.branch.0",
        "decoders.0.unit.branch.0",
        "decoders.1.unit.branch.0",
        "decoders.2.unit.branch.0",
    ]
    assert len(batchnorm_names(net)) == len(remaining) + 14  # 7 units x (ConvBN + shortcut ConvBN)


def test_sequential_conv_bn_pairs_are_folded_and_the_original_is_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.BatchNorm2d(8),  # follows a ReLU: stays
        nn.Conv2d(8, 4, 1, bias=False),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics even in eval: stays
    )
    with_random_statistics(net).eval()
    x = images(batch=3, size=16)
    with torch.no_grad():
        expected = net(x)
        folded = fold_batchnorm(net)
        got = folded(x)
    assert relative_error(got, expected) <= 1e-5
    assert [type(m).__name__ for m in folded] == [  # (the 3x3 conv on the inference convolution)
        "Conv3x3", "Identity", "ReLU", "BatchNorm2d", "Conv2d", "Identity", "Conv2d", "BatchNorm2d"
    ]
    assert folded[4].bias is not None  # the folded BN shift becomes the conv's bias
    assert [type(m).__name__ for m in net].count("BatchNorm2d") == 4
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)


def test_weights_version_and_cache_follow_in_place_changes():
    net = TINY_NETS["UNet"]().eval()
    cache = FoldedNetCache()
    first = cache.get(net)
    assert cache.get(net) is first and weights_version(net) == weights_version(net)
    with torch.no_grad():
        net.head.weight.mul_(2)
    second = cache.get(net)
    assert second is not first
    x = images(batch=1)
    with torch.no_grad():
        assert relative_error(second(x), net(x)) <= 1e-5
    cache.clear()
    assert cache.get(net) is not second


# ---------------------------------------------------------------- BrainSegSemantic.fuse_for_inference


def test_model_eval_uses_the_folded_copy_and_matches_the_unfolded_model():
    inputs = [record(0), record(1)]
    fused, plain = tiny_model().eval(), tiny_model(fuse_for_inference=False).eval()
    with torch.no_grad():
        got = fused(inputs)
        expected = plain(inputs)
        assert fused.inference_net() is not fused.net and plain.inference_net() is plain.net
        assert not batchnorm_names(fused.inference_net())
    for g, e in zip(got, expected):
        assert relative_error(g["sem_seg"], e["sem_seg"]) <= 1e-5
    assert fused.inference_net() is fused.net  # gradients enabled: the real net


def test_state_dict_keys_unchanged_by_an_eval_forward():
    model = tiny_model().eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        model([record(0)])
    assert list(model.state_dict()) == keys
    assert not any("folded" in name for name, _ in model.named_modules())
    assert sum(1 for _ in model.parameters()) == sum(1 for _ in tiny_model().parameters())


def test_back_in_train_mode_the_original_net_learns():
    model = tiny_model().eval()
    with torch.no_grad():
        model([record(0)])
        folded = model.inference_net()
    model.train()
    loss = model([record(1)])["loss_sem_seg"]
    loss.backward()
    grads = [p.grad for p in model.net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in folded.parameters())
    # the BN running statistics moved in that training forward: the next eval folds them anew
    model.eval()
    with torch.no_grad():
        assert model.inference_net() is not folded


def test_a_weight_change_after_eval_refolds():
    model, other = tiny_model().eval(), tiny_model().eval()
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    inputs = [record(0)]
    with torch.no_grad():
        before = model(inputs)[0]["sem_seg"]
        model.load_state_dict(other.state_dict())  # e.g. a checkpoint loaded into an eval model
        after = model(inputs)[0]["sem_seg"]
        expected = other(inputs)[0]["sem_seg"]
    assert relative_error(after, expected) <= 1e-5
    assert (after - before).abs().max() > 1e-3


def test_eval_under_inference_mode_then_no_grad():
    model = tiny_model().eval()
    with torch.inference_mode():
        model([record(0)])
    with torch.no_grad():
        out = model([record(0)])[0]["sem_seg"]  # the copy built under inference mode is reusable
    assert torch.isfinite(out).all()


def test_autocast_inference_keeps_matmul_weights_in_the_autocast_dtype():
    """Under bf16 autocast the folded net holds bf16 conv/linear weights (norms stay float32) and
    gives exactly what autocast gives with float32 weights; without autocast it is float32 again."""
    model = tiny_model().eval()
    x = images(size=32).contiguous(memory_format=torch.channels_last)
    matmul_layers = (nn.Conv2d, nn.Linear)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net = model.inference_net()
            assert {m.weight.dtype for m in net.modules() if isinstance(m, matmul_layers)} == {torch.bfloat16}
            assert {m.weight.dtype for m in net.modules() if isinstance(m, nn.LayerNorm)} == {torch.float32}
            ours = net(x)
            reference = fold_batchnorm(model.net)(x)  # float32 weights, cast by autocast at every call
        assert torch.equal(ours, reference)
        assert {m.weight.dtype for m in model.inference_net().modules() if isinstance(m, matmul_layers)} == {
            torch.float32}
