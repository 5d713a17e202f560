"""The MaskDINO meta-architecture: training step, inference outputs, learning, configs."""

import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances

from maskdino_testing import PROJECT_DIR, blob_masks, make_input, tiny_model_config
from maskdino.meta_arch import semantic_inference

ONE_OBJECT = [(8, 24, 10, 30)]
TWO_OBJECTS = [(8, 24, 10, 30), (40, 56, 36, 60)]


def test_training_step_with_an_empty_image(tiny_model):
    tiny_model.train()
    losses = tiny_model([make_input(TWO_OBJECTS, seed=1), make_input([], seed=2)])
    num_layers = 2  # decoder layers: aux outputs = initial prediction + first layer
    for suffix in (
        ["", "_interm", "_dn"] + [f"_{i}" for i in range(num_layers)] + [f"_dn_{i}" for i in range(num_layers)]
    ):
        for name in ("loss_class", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
            assert name + suffix in losses
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for module in (
        tiny_model.backbone.stem,
        tiny_model.pixel_decoder.encoder,
        tiny_model.transformer_decoder.class_embed,
        tiny_model.transformer_decoder.label_embedding,
        tiny_model.transformer_decoder.layers[-1].cross_attn,
    ):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_training_step_without_any_object(tiny_model):
    tiny_model.train()
    losses = tiny_model([make_input([], seed=3), make_input([], seed=4)])
    with_objects = tiny_model([make_input(ONE_OBJECT, seed=3), make_input([], seed=4)])
    assert set(losses) == set(with_objects)  # same names on every worker (detectron2 averages them)
    # only the background target per image: every loss finite, the mask losses learn it
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_class"] > 0 and losses["loss_mask"] > 0 and losses["loss_mask_dn"] > 0
    sum(losses.values()).backward()


def test_inference_outputs_at_requested_size(tiny_model):
    tiny_model.eval()
    inputs = [make_input(ONE_OBJECT, seed=5), make_input([], seed=6)]
    inputs[1]["height"], inputs[1]["width"] = 96, 80
    with torch.no_grad():
        outputs = tiny_model(inputs)
    assert len(outputs) == 2
    for out, (height, width) in zip(outputs, [(64, 64), (96, 80)]):
        sem_seg = out["sem_seg"]
        assert sem_seg.shape == (2, height, width) and sem_seg.dtype == torch.float32
        assert sem_seg.min() >= 0 and sem_seg.max() <= 1
        assert torch.allclose(sem_seg.sum(0), torch.ones(height, width))
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == (height, width)
        assert len(inst) == 8  # top-k over 8 queries x 1 class
        assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (8, height, width)
        assert isinstance(inst.pred_boxes, Boxes) and inst.pred_boxes.tensor.shape == (8, 4)
        box = inst.pred_boxes.tensor
        assert (box[:, 0] >= 0).all() and (box[:, 2] <= width).all() and (box[:, 3] <= height).all()
        assert inst.scores.shape == (8,) and (inst.scores >= 0).all() and (inst.scores <= 1).all()
        assert inst.pred_classes.tolist() == [0] * 8
        # scores are sorted by class probability, the sem_seg tumour map is bounded by the best one
        assert sem_seg[1].max() <= inst.scores.max() / 1.0 + 1.0


def test_mask_box_source_gives_tight_boxes(tiny_model):
    tiny_model.eval()
    tiny_model.box_source = "mask"
    with torch.no_grad():
        inst = tiny_model([make_input(ONE_OBJECT, seed=7)])[0]["instances"]
    for mask, box in zip(inst.pred_masks, inst.pred_boxes.tensor):
        if mask.any():
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_split_components_gives_one_instance_per_connected_component(tiny_model):
    # query 0 (class score 0.8) covers two blobs that do not touch, even diagonally;
    # query 1 (0.5) covers one blob
    logits = torch.full((2, 8, 8), -10.0)
    logits[0, 0:2, 0:2] = 2.0
    logits[0, 5:8, 4:6] = 1.0
    logits[1, 3, 6:8] = 3.0
    scores = torch.tensor([[0.8], [0.5]])
    tiny_model.box_source, tiny_model.split_components, tiny_model.matrix_nms_sigma = "mask", True, None
    inst = tiny_model.instance_inference(scores, logits, torch.zeros(2, 4), (8, 8))
    found = {tuple(box.tolist()): (mask.sum().item(), score.item())
             for box, mask, score in zip(inst.pred_boxes.tensor, inst.pred_masks, inst.scores)}
    assert found.keys() == {(0.0, 0.0, 2.0, 2.0), (4.0, 5.0, 6.0, 8.0), (6.0, 3.0, 8.0, 4.0)}
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for box, (area, score) in [((0.0, 0.0, 2.0, 2.0), (4, 0.8 * sigmoid(2))),
                               ((4.0, 5.0, 6.0, 8.0), (6, 0.8 * sigmoid(1))),
                               ((6.0, 3.0, 8.0, 4.0), (2, 0.5 * sigmoid(3)))]:
        assert found[box][0] == area and found[box][1] == pytest.approx(score, rel=1e-5)
    assert inst.pred_classes.tolist() == [0, 0, 0]
    cfg = tiny_model_config()
    cfg.split_components = True
    with pytest.raises(ValueError, match="split_components=True needs box_source='mask'"):
        instantiate(cfg)


def test_thirty_iterations_reduce_the_loss(tiny_model):
    torch.manual_seed(0)
    tiny_model.train()
    batch = [make_input(TWO_OBJECTS, seed=8), make_input([], seed=9)]
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        loss = sum(tiny_model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, history


def test_pixel_decoder_shapes_must_match_backbone():
    cfg = tiny_model_config()
    cfg.pixel_decoder.input_shape = {f"res{i}": ShapeSpec(channels=16 * 2 ** (i - 2), stride=2**i) for i in range(2, 6)}
    with pytest.raises(ValueError, match="backbone feature 'res2' has channels=8"):
        instantiate(cfg)


def test_configs_load_and_register():
    assert META_ARCH_REGISTRY.get("MaskDINO").__name__ == "MaskDINO"
    full = LazyConfig.load(os.path.join(PROJECT_DIR, "configs", "maskdino_R50_lgg.py"))
    small = LazyConfig.load(os.path.join(PROJECT_DIR, "configs", "maskdino_small_lgg_demo.py"))
    assert full.model.transformer_decoder.num_queries == 300 and full.model.transformer_decoder.num_layers == 6
    assert full.model.pixel_decoder.num_encoder_layers == 6 and full.model.transformer_decoder.hidden_dim == 256
    assert full.model.transformer_decoder.num_levels == 4 and full.model.transformer_decoder.dn_num_queries == 100
    assert full.model.transformer_decoder.num_classes == 2  # tumour + background
    assert full.train.init_checkpoint == ""
    assert full.train.clip_grad_norm == 0.01 and not full.model.split_components  # as in the paper
    assert small.train.clip_grad_norm is None and small.model.split_components and small.model.box_source == "mask"
    assert small.dataloader.train.dataset.names == "lgg_demo_train"
    assert small.model.transformer_decoder.hidden_dim == 64 and small.model.transformer_decoder.num_levels == 3
    model = instantiate(small.model)
    assert type(model) is META_ARCH_REGISTRY.get("MaskDINO")
    assert model.backbone.output_shape()["res5"].channels == 256


def test_targets_get_the_background_as_stuff(tiny_model):
    inputs = [make_input(TWO_OBJECTS, seed=10), make_input([], seed=11)]
    images = tiny_model.preprocess_image(inputs)
    with_objects, empty = tiny_model.prepare_targets([x["instances"] for x in inputs], images)
    assert with_objects["labels"].tolist() == [0, 0, 1]
    masks = blob_masks(TWO_OBJECTS)
    assert torch.equal(with_objects["masks"][:2], masks)
    assert torch.equal(with_objects["masks"][2], ~masks.any(0))
    assert torch.allclose(with_objects["boxes"][0], torch.tensor([20 / 64, 16 / 64, 20 / 64, 16 / 64]))
    assert empty["labels"].tolist() == [1] and empty["masks"].all()
    assert torch.allclose(empty["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0]]))


def test_semantic_inference_known_answer():
    # query 0: tumour (score 0.4) on the left half; query 1: background (0.3) on the right half
    scores = torch.tensor([[0.4, 0.01], [0.02, 0.3]])
    logits = torch.full((2, 2, 4), -30.0)
    logits[0, :, :2] = 30.0
    logits[1, :, 2:] = 30.0
    sem = semantic_inference(scores, logits)
    assert sem.shape == (2, 2, 4)
    assert torch.allclose(sem[1, :, :2], torch.full((2, 2), 0.4 / 0.41), atol=1e-5)
    assert torch.allclose(sem[1, :, 2:], torch.full((2, 2), 0.02 / 0.32), atol=1e-5)
    assert torch.allclose(sem.sum(0), torch.ones(2, 4))
    # nothing claimed anywhere -> background
    assert torch.equal(semantic_inference(scores, torch.full((2, 1, 1), -200.0))[:, 0, 0], torch.tensor([1.0, 0.0]))
