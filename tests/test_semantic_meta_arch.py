"""Tests of BrainSegSemantic, its post-processing and the losses."""

import logging
import math

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from brainseg.modeling import BrainSegSemantic, probabilities_to_instances
from brainseg.modeling.losses import BCEDiceLoss, DiceLoss, FocalLoss
from brainseg.modeling.nets import UNeXt

MEAN, STD = [20.0, 25.0, 18.0], [30.0, 35.0, 28.0]

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(**kwargs) -> BrainSegSemantic:
    torch.manual_seed(0)
    net = UNeXt(conv_channels=(4, 8, 16), token_channels=(20, 32))
    return BrainSegSemantic(net=net, loss=BCEDiceLoss(), pixel_mean=MEAN, pixel_std=STD, **kwargs)


def make_input(size: tuple, seed: int, **extra) -> dict:
    """A mapper-style input: uint8 (3, H, W) image and int64 0/1 (H, W) targets."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
    sem_seg = torch.randint(0, 2, size, generator=generator)
    return {"image": image, "sem_seg": sem_seg, **extra}


# ---------------------------------------------------------------- meta-architecture


def test_registered_and_lazy_instantiable():
    assert META_ARCH_REGISTRY.get("BrainSegSemantic") is BrainSegSemantic
    cfg = L(BrainSegSemantic)(
        net=L(UNeXt)(conv_channels=(4, 8, 16), token_channels=(20, 32)),
        loss=L(FocalLoss)(gamma=1.0),
        pixel_mean=MEAN,
        pixel_std=STD,
        mask_threshold=0.3,
    )
    model = instantiate(cfg)
    assert isinstance(model.net, UNeXt) and isinstance(model.loss, FocalLoss)
    assert model.size_divisibility == 32 and model.mask_threshold == 0.3
    assert model.device == torch.device("cpu")
    assert not any("compiled" in key for key in model.state_dict())


def test_training_returns_finite_loss_with_gradients():
    model = small_model().train()
    losses = model([make_input((37, 45), 0), make_input((50, 31), 1)])
    assert set(losses) == {"loss_sem_seg"}
    assert losses["loss_sem_seg"].dim() == 0 and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    grads = [p.grad for p in model.net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_training_loss_ignores_padding():
    """The batch padding is excluded: the loss equals the loss of the unpadded net output."""
    model = small_model().train()
    model.net.eval()  # fixed BN statistics, so padding cannot change them
    record = make_input((37, 45), 0)
    loss = model([record])["loss_sem_seg"]
    image = (record["image"].float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    expected = BCEDiceLoss()(model.net(image[None]), record["sem_seg"][None])
    torch.testing.assert_close(loss, expected)


def test_training_without_targets_is_an_error():
    model = small_model().train()
    with pytest.raises(KeyError, match="sem_seg"):
        model([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}])


def test_eval_outputs_at_record_size():
    model = small_model().eval()
    inputs = [make_input((37, 45), 0, height=74, width=91), make_input((32, 32), 1)]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2
    sem_seg = outputs[0]["sem_seg"]
    assert sem_seg.shape == (2, 74, 91) and sem_seg.dtype == torch.float32
    torch.testing.assert_close(sem_seg.sum(0), torch.ones(74, 91))
    assert (sem_seg >= 0).all() and (sem_seg <= 1).all()
    assert outputs[1]["sem_seg"].shape == (2, 32, 32)
    for output, size in zip(outputs, [(74, 91), (32, 32)]):
        instances = output["instances"]
        assert instances.image_size == size
        union = instances.pred_masks.any(0) if len(instances) else torch.zeros(size, dtype=torch.bool)
        assert torch.equal(union, output["sem_seg"][1] > 0.5)


def test_channels_last_option_gives_same_outputs():
    inputs = [make_input((37, 45), 0)]
    with torch.no_grad():
        fast = small_model(channels_last=True).eval()(inputs)[0]["sem_seg"]
        plain = small_model(channels_last=False).eval()(inputs)[0]["sem_seg"]
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no compiler here")

        return run

    inputs = [make_input((32, 32), 0)]
    model = small_model(compile_inference=True).eval()
    with torch.no_grad():
        expected = small_model().eval()(inputs)[0]["sem_seg"]
        monkeypatch.setattr(torch, "compile", broken_compile)
        with caplog.at_level(logging.WARNING, logger="brainseg.modeling.meta_arch"):
            got = model(inputs)[0]["sem_seg"]
    torch.testing.assert_close(got, expected)
    assert "no compiler here" in caplog.text
    assert model.compile_inference is False


def test_mismatched_pixel_statistics_are_rejected():
    with pytest.raises(ValueError, match="pixel_mean"):
        BrainSegSemantic(net=UNeXt(), loss=DiceLoss(), pixel_mean=[1.0, 2.0], pixel_std=[1.0])


# ---------------------------------------------------------------- post-processing


def test_instances_from_two_blobs():
    probs = torch.zeros(20, 30)
    probs[2:6, 3:8] = 0.9  # blob A: rows 2-5, cols 3-7
    probs[6, 8] = 0.7  # touches blob A diagonally only: 8-connected -> same instance
    probs[10:15, 20:28] = 0.6  # blob B
    probs[12, 24] = 1.0
    probs[0, 29] = 0.5  # not above the threshold
    instances = probabilities_to_instances(probs, threshold=0.5)
    assert len(instances) == 2 and instances.image_size == (20, 30)
    score_a = (0.9 * 20 + 0.7) / 21
    score_b = (0.6 * 39 + 1.0) / 40
    torch.testing.assert_close(instances.scores, torch.tensor([score_a, score_b]))
    torch.testing.assert_close(
        instances.pred_boxes.tensor, torch.tensor([[3.0, 2.0, 9.0, 7.0], [20.0, 10.0, 28.0, 15.0]])
    )
    assert instances.pred_masks.dtype == torch.bool
    assert instances.pred_masks.sum((1, 2)).tolist() == [21, 40]
    assert instances.pred_masks[0, 6, 8] and instances.pred_masks[1, 12, 24]
    assert instances.pred_classes.tolist() == [0, 0]


def test_instances_threshold_and_empty_map():
    probs = torch.full((8, 9), 0.4)
    assert len(probabilities_to_instances(probs)) == 0
    empty = probabilities_to_instances(probs)
    assert empty.pred_masks.shape == (0, 8, 9) and empty.pred_boxes.tensor.shape == (0, 4)
    # the same types as a map with components (the empty map skips the labelling pass)
    assert (empty.pred_masks.dtype, empty.pred_boxes.tensor.dtype, empty.scores.dtype, empty.pred_classes.dtype) == (
        torch.bool, torch.float32, torch.float32, torch.int64)
    everything = probabilities_to_instances(probs, threshold=0.3)
    assert len(everything) == 1
    torch.testing.assert_close(everything.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 9.0, 8.0]]))
    torch.testing.assert_close(everything.scores, torch.tensor([0.4]))


def test_instances_of_many_components_match_scipy_labels():
    """Hundreds of components (an untrained net's noise): each instance mask is one component of
    scipy's 8-connected labelling, in decreasing score order, the scores their mean probability."""
    from scipy import ndimage

    probs = torch.rand(64, 80, generator=torch.Generator().manual_seed(0))
    instances = probabilities_to_instances(probs, threshold=0.8)
    labels, count = ndimage.label((probs > 0.8).numpy(), structure=np.ones((3, 3)))
    assert count > 100 and len(instances) == count
    expected = {}
    for k in range(1, count + 1):
        region = labels == k
        expected[np.flatnonzero(region).tobytes()] = float(probs.numpy()[region].mean())
    got_scores = instances.scores.tolist()
    for mask, score in zip(instances.pred_masks.numpy(), got_scores):
        assert expected.pop(np.flatnonzero(mask).tobytes()) == pytest.approx(score, rel=1e-5)
    assert not expected and got_scores == sorted(got_scores, reverse=True)


def test_logits_to_probabilities_same_size_equals_resized_path():
    """Output size = image size skips the resize; the result equals detectron2's resize path
    (bilinear at scale 1 is the identity), padding cropped off."""
    from detectron2.modeling.postprocessing import sem_seg_postprocess

    from brainseg.modeling.postprocessing import logits_to_probabilities

    logits = torch.randn(1, 32, 40, generator=torch.Generator().manual_seed(1)) * 4
    fast = logits_to_probabilities(logits, (30, 37), 30, 37)
    torch.testing.assert_close(fast, sem_seg_postprocess(logits, (30, 37), 30, 37)[0].sigmoid(), rtol=0, atol=1e-7)
    assert fast.shape == (30, 37)
    assert logits_to_probabilities(logits, (30, 37), 60, 74).shape == (60, 74)


# ---------------------------------------------------------------- losses


def perfect_logits(targets: torch.Tensor) -> torch.Tensor:
    return (targets.float() * 2 - 1)[:, None] * 30


@pytest.fixture
def targets() -> torch.Tensor:
    t = torch.zeros(2, 16, 16, dtype=torch.int64)
    t[0, 4:10, 3:12] = 1
    t[1, 8:, 8:] = 1
    return t


@pytest.mark.parametrize("loss_fn", [DiceLoss(), BCEDiceLoss(), FocalLoss(), DiceLoss(per_image=False)])
def test_perfect_prediction_has_zero_loss(loss_fn, targets):
    assert loss_fn(perfect_logits(targets), targets).item() == pytest.approx(0.0, abs=1e-5)


def test_wrong_prediction_dice_loss_is_one(targets):
    assert DiceLoss()(-perfect_logits(targets), targets).item() == pytest.approx(1.0, abs=1e-5)


def test_known_values_at_half_probability():
    targets = torch.zeros(1, 4, 4, dtype=torch.int64)
    targets[0, :2] = 1  # half the pixels
    logits = torch.zeros(1, 1, 4, 4)  # p = 0.5: Dice = 2 * 4 / (8 + 8) = 0.5, BCE = ln 2
    assert DiceLoss()(logits, targets).item() == pytest.approx(0.5, abs=1e-5)
    assert BCEDiceLoss()(logits, targets).item() == pytest.approx(0.5 * math.log(2) + 0.5, abs=1e-5)
    # focal at p = 0.5: ln2 * 0.5**2 * alpha_t, alpha_t = 0.25 for the positives and 0.75 for the negatives
    assert FocalLoss()(logits, targets).item() == pytest.approx(math.log(2) * 0.25 * 0.5, abs=1e-6)
    assert FocalLoss(alpha=-1, gamma=0)(logits, targets).item() == pytest.approx(math.log(2), abs=1e-6)


def test_per_image_and_batch_dice_differ():
    targets = torch.zeros(2, 4, 4, dtype=torch.int64)
    targets[0, 0, 0] = 1
    targets[1] = 1
    logits = perfect_logits(targets)
    logits[0, 0, 0, 0] = -30  # image 0 misses its only tumour pixel
    # per image: Dice 0 and 1 -> loss 0.5; whole batch: 2 * 16 / (16 + 17) -> loss 1/33
    assert DiceLoss()(logits, targets).item() == pytest.approx(0.5, abs=1e-4)
    assert DiceLoss(per_image=False)(logits, targets).item() == pytest.approx(1 / 33, abs=1e-4)


@pytest.mark.parametrize("loss_fn", [DiceLoss(), BCEDiceLoss(), FocalLoss()])
def test_ignore_label_pixels_do_not_count(loss_fn, targets):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=generator, requires_grad=True)
    ignored = targets.clone()
    ignored[:, :, :5] = 255
    loss = loss_fn(logits, ignored)
    changed = logits.detach().clone()
    changed[:, :, :, :5] = 100.0  # anything in the ignored region
    torch.testing.assert_close(loss_fn(changed, ignored), loss.detach())
    # equals the loss of the valid columns alone
    torch.testing.assert_close(loss_fn(logits[..., 5:], targets[..., 5:]), loss)
    loss.backward()
    assert (logits.grad[..., :5] == 0).all()


def test_all_ignored_gives_zero_loss_not_nan():
    targets = torch.full((1, 4, 4), 255, dtype=torch.int64)
    for loss_fn in (DiceLoss(), BCEDiceLoss(), FocalLoss()):
        assert loss_fn(torch.randn(1, 1, 4, 4), targets).item() == 0.0


def test_loss_shape_errors():
    with pytest.raises(ValueError, match=r"logits of shape \(B, 1, H, W\)"):
        DiceLoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="do not match"):
        BCEDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5, 4, dtype=torch.int64))
