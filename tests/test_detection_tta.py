"""Flip TTA for the detectors: default boxes paired with their mirrors, two views averaged."""

import pytest
import torch
from model_helpers import randomize_batchnorm
from torchvision.models.detection.image_list import ImageList

import mobilenets
from mobilenets.detection.tta import FlipTTA, mirror_order
from mobilenets.registry import DETECTORS

SMALL = dict(width_mult=0.25, num_classes=4, input_size=128)
MIRROR_X = torch.tensor([-1.0, 1.0, 1.0, 1.0])  # a box offset (dx, dy, dw, dh) seen in the mirror


def mirror(boxes, width):
    """Boxes (x1, y1, x2, y2) of an image ``width`` pixels wide, seen in its mirror."""
    return boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([width, 0.0, width, 0.0])


def detector(name="ssdlite_mobilenet_v3_small"):
    torch.manual_seed(0)
    model = randomize_batchnorm(mobilenets.create_model(name, **SMALL), seed=0)
    for p in model.head.parameters():  # heads that say something: the init's outputs are near constant
        p.data.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_default_box_has_its_mirror(name):
    model = mobilenets.create_model(name, **SMALL)
    size = model.input_size
    maps = [torch.zeros(1, 1, side, side) for side in model.map_sizes]
    boxes = model.anchor_generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0]
    order = mirror_order(tuple(model.map_sizes), tuple(model.anchor_generator.num_anchors_per_location()))
    assert sorted(order.tolist()) == list(range(len(boxes)))
    torch.testing.assert_close(mirror(boxes[order], size), boxes, atol=1e-3, rtol=0)


def test_the_two_views_average_to_a_mirror_symmetric_answer():
    # The backbone alone is not mirror-symmetric (its stride-2 convolutions sample even columns),
    # so one view of a mirrored image is not the mirror of its answer; the average of both views is.
    model = detector()
    tta = FlipTTA(model)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        heads, _ = tta.heads(x)
        mirrored, _ = tta.heads(x.flip(-1))
        plain = model.head(list(model.backbone(torch.cat([x, x.flip(-1)])).values()))
    order = mirror_order(tuple(model.map_sizes), tuple(model.anchor_generator.num_anchors_per_location()))
    torch.testing.assert_close(mirrored["cls_logits"][:, order], heads["cls_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mirrored["bbox_regression"][:, order] * MIRROR_X, heads["bbox_regression"],
                               atol=1e-5, rtol=1e-5)
    one_view = plain["bbox_regression"][2:, order] * MIRROR_X - plain["bbox_regression"][:2]
    assert one_view.abs().max() > 1e-2  # not symmetric by itself: the test above can fail
    # the class probabilities are the mean of the two views'
    probs = plain["cls_logits"].softmax(-1)
    torch.testing.assert_close(heads["cls_logits"].exp(), (probs[:2] + probs[2:, order]) / 2)


def test_detections_in_the_images_pixels():
    model = detector("ssdlite_mobilenet_v2")
    images = [torch.rand(3, 100, 150), torch.rand(3, 128, 96)]
    out = FlipTTA(model)(images)
    assert len(out) == 2
    for det, image in zip(out, images):
        assert len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) > 0
        height, width = image.shape[1:]
        assert (det["boxes"][:, 2] <= width + 1e-3).all() and (det["boxes"][:, 3] <= height + 1e-3).all()
        assert (det["labels"] >= 1).all() and (det["scores"] <= 1).all()
    # a mirrored image gives the mirrored boxes with the same scores and labels (the average is
    # symmetric); boxes of equal score may come in either order, so each is looked up
    seen = FlipTTA(model)([images[0].flip(-1)])[0]
    ours = out[0]
    for box, score, label in zip(mirror(seen["boxes"][:20], 150), seen["scores"][:20], seen["labels"][:20]):
        same = (ours["scores"] - score).abs().lt(1e-6) & (ours["labels"] == label)
        assert same.any() and (ours["boxes"][same] - box).abs().amax(dim=1).min() < 1e-2
