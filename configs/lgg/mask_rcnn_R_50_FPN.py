"""detectron2's model-zoo Mask R-CNN R50-FPN (``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py``),
as it ships, on LGG's COCO-registered splits (``lgg_*_coco``: one instance per tumour component)
and trained from scratch: a stock detectron2 LazyConfig that ``tools/train_net.py`` runs like
its own (brainseg's ``train.*`` keys default when absent; results are COCO AP only, since the
stock evaluator is detectron2's COCOEvaluator).

Only what LGG needs is changed: one class, RLE masks as bitmasks, 256-pixel slices kept at
their size, no ImageNet weights (none can be downloaded here), and the device.
"""
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.model_zoo import get_config

_stock = get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
model, dataloader, optimizer, lr_multiplier, train = (
    _stock.model, _stock.dataloader, _stock.optimizer, _stock.lr_multiplier, _stock.train)

model.roi_heads.num_classes = 1
model.backbone.bottom_up.freeze_at = 0  # from scratch: train every stage
dataloader.train.dataset.names = "lgg_train_coco"
dataloader.test.dataset.names = "lgg_test_coco"
dataloader.train.mapper.instance_mask_format = "bitmask"  # the converted json holds RLE masks
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=256, max_size=256)]
dataloader.train.total_batch_size = 8
train.init_checkpoint = ""
train.device = "auto"
train.output_dir = "./output/lgg_mask_rcnn"
