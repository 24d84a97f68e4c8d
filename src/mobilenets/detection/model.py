"""The one detector builder: a ``DetectorSpec`` plus width, classes and input size -> ``SSD``.

The detector is torchvision's ``SSD`` (its resize and normalisation, matching, loss and
post-processing) around this package's backbone, extra layers and heads, laid out module by
module like torchvision's ``ssdlite320_mobilenet_v3_large`` so that state dicts map one to one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import ssd as tv_ssd

from ..blocks import InvertedResidual
from ..layers import ConvBNAct
from ..model import MobileNet
from ..specs import ModelSpec, reduced_tail
from ..weights import convert_state_dict, read_checkpoint
from .anchors import default_boxes
from .specs import DetectorSpec, Tap


class DetectionBackbone(nn.Module):
    """The classifier's stem and blocks up to the last tap, then the extra layers.

    ``forward`` returns the feature maps, finest first, as torchvision's SSD expects them.
    """

    def __init__(self, net: MobileNet, taps: tuple[Tap, ...], extras: nn.ModuleList) -> None:
        super().__init__()
        ends = {f.stride: f for f in net.feature_info}
        self._taps: dict[int, str] = {}
        self.out_channels: list[int] = []
        for tap in taps:
            if tap.at == "end":
                index = ends[tap.stride].index
                self.out_channels.append(ends[tap.stride].channels)
            else:  # the first block of the stride: the expansion before its stride-2 depthwise conv
                index = ends[tap.stride // 2].index + 1
                block = net.blocks[index]
                if not isinstance(block, InvertedResidual) or isinstance(block.expand, nn.Identity):
                    raise ValueError(f"block {index} has no expansion layer to tap")
                self.out_channels.append(block.expand.conv.out_channels)
            self._taps[index] = tap.at
        self.stem = net.stem
        self.blocks = net.blocks[: max(self._taps) + 1]
        self.extras = extras
        self.out_channels += [extra[-1].conv.out_channels for extra in extras]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = []
        if self.stem.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # the resized batch comes NCHW
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if self._taps.get(i) == "expansion":  # a stride-2 block: no residual to add
                x = block.expand(x)
                maps.append(x)
                x = block.project(block.se(block.dw(x)))
            else:
                x = block(x)
                if i in self._taps:
                    maps.append(x)
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


def extra_layer(in_ch: int, out_ch: int, depthwise: bool) -> nn.Sequential:
    """1x1 to out/2, then a stride-2 3x3: depthwise + 1x1 (SSDLite) or one full conv (SSD)."""
    mid = out_ch // 2
    if depthwise:
        return nn.Sequential(ConvBNAct(in_ch, mid, 1), ConvBNAct(mid, mid, 3, 2, groups=mid), ConvBNAct(mid, out_ch, 1))
    return nn.Sequential(ConvBNAct(in_ch, mid, 1), ConvBNAct(mid, out_ch, 3, 2))


def prediction_layer(in_ch: int, out_ch: int, lite: bool, kernel: int = 3) -> nn.Module:
    """A head's layer on one map: 3x3 depthwise (BN, ReLU6) + 1x1 with bias (SSDLite), or a
    ``kernel`` x ``kernel`` convolution with bias (SSD)."""
    if lite:
        return nn.Sequential(ConvBNAct(in_ch, in_ch, 3, groups=in_ch), nn.Conv2d(in_ch, out_ch, 1))
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)


class DetectionHead(nn.Module):
    """Class logits (background included) and box deltas for every default box of every map."""

    def __init__(self, channels: list[int], anchors: list[int], num_classes: int, lite: bool, kernel: int) -> None:
        super().__init__()
        self.classification_head = tv_ssd.SSDScoringHead(nn.ModuleList(
            prediction_layer(c, a * num_classes, lite, kernel) for c, a in zip(channels, anchors)), num_classes)
        self.regression_head = tv_ssd.SSDScoringHead(nn.ModuleList(
            prediction_layer(c, a * 4, lite, kernel) for c, a in zip(channels, anchors)), 4)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


BACKGROUND_PRIOR = 0.99  # a new detector's background share of every anchor's softmax


def last_conv(branch: nn.Module) -> nn.Conv2d:
    """The convolution that gives a prediction branch's outputs."""
    return [m for m in branch.modules() if isinstance(m, nn.Conv2d)][-1]


@torch.no_grad()
def set_background_prior(head: tv_ssd.SSDScoringHead, prior: float) -> None:
    """Biases that give class 0 (background) ``prior`` of every anchor's softmax when the inputs
    add little, and the other classes the rest evenly (channel a * C + k: anchor a, class k)."""
    classes = head.num_columns
    for branch in head.module_list:
        bias = last_conv(branch).bias.view(-1, classes)
        bias.zero_()
        bias[:, 0] = math.log(prior * (classes - 1) / (1 - prior))


class SSD(tv_ssd.SSD):
    """An SSD or SSDLite detector on a MobileNet backbone.

    Training mode: ``model(images, targets)`` returns the losses (``bbox_regression``,
    ``classification``). Eval mode: ``model(images)`` returns, per image, a dict of ``boxes``
    (x1, y1, x2, y2 in the input image's pixels), ``scores`` and ``labels`` (0 is background).
    Images are lists of float tensors in [0, 1], any size: they are resized to
    ``input_size`` x ``input_size`` and normalised inside, as torchvision's detectors do.
    """

    def __init__(self, spec: DetectorSpec, backbone_spec: ModelSpec, *, width_mult: float = 1.0,
                 num_classes: int = 91, input_size: int | None = None,
                 box_scales: tuple[float, float] | None = None) -> None:
        net = MobileNet(backbone_spec, width_mult=width_mult, num_classes=1)
        depth = lambda c: max(spec.min_depth, int(c * width_mult))  # noqa: E731  (torchvision's get_depth)
        widths = [net.feature_info[-1].channels] + [depth(e.c) for e in spec.extras]
        lite = spec.head == "ssdlite"
        extras = nn.ModuleList(extra_layer(a, b, lite) for a, b in zip(widths, widths[1:]))
        backbone = DetectionBackbone(net, spec.taps, extras)
        boxes = spec.boxes
        if box_scales is not None:
            boxes = dataclasses.replace(boxes, min_scale=box_scales[0], max_scale=box_scales[1])
        anchors = default_boxes(boxes)
        head = DetectionHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes, lite,
                             spec.head_kernel)
        size = input_size or spec.input_size
        super().__init__(
            backbone, anchors, (size, size), num_classes, image_mean=list(spec.image_mean),
            image_std=list(spec.image_std), head=head, score_thresh=spec.score_thresh, nms_thresh=spec.nms_thresh,
            detections_per_img=spec.detections_per_img, topk_candidates=spec.topk_candidates,
        )
        self.spec, self.in_chans, self.input_size = spec, 3, size
        self.backbone_spec, self.width_mult = backbone_spec, width_mult  # what a classifier must be to start it
        self._init_weights()

    def _init_weights(self, background_prior: float = BACKGROUND_PRIOR) -> None:
        """Every convolution as the classifiers' (Kaiming, fan out), the prediction layers
        normal(0, 0.01), and the background given ``background_prior`` of every anchor's softmax
        (RetinaNet's prior-probability bias). From scratch in a short run this learns several
        times faster than torchvision's normal(0, 0.03) everywhere (docs/results.md section 10)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = self.spec.bn_eps, self.spec.bn_momentum
        for branch in (*self.head.classification_head.module_list, *self.head.regression_head.module_list):
            nn.init.normal_(last_conv(branch).weight, 0.0, 0.01)
        set_background_prior(self.head.classification_head, background_prior)

    @property
    def map_sizes(self) -> list[int]:
        """The side of each feature map the heads predict on, finest first, at the input size."""
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                maps = self.backbone(torch.zeros(1, 3, self.input_size, self.input_size)).values()
        finally:
            self.train(was_training)
        return [m.shape[-1] for m in maps]

    @property
    def num_boxes(self) -> int:
        """Default boxes per image at the model's input size."""
        per_location = self.anchor_generator.num_anchors_per_location()
        return sum(s * s * a for s, a in zip(self.map_sizes, per_location))


def build_detector(spec: DetectorSpec, backbone_spec: ModelSpec, *, width_mult: float, num_classes: int,
                   reduced: bool, input_size: int | None, box_scales: tuple[float, float] | None = None) -> SSD:
    """``SSD`` for a spec; ``reduced`` halves the backbone's last stage (V3 only); ``box_scales``
    replaces the spec's smallest and largest default-box scale."""
    if reduced:
        backbone_spec = reduced_tail(backbone_spec)
    return SSD(spec, backbone_spec, width_mult=width_mult, num_classes=num_classes,
               input_size=input_size, box_scales=box_scales)


def load_backbone_weights(detector: SSD, path: str | os.PathLike) -> list[str]:
    """Start a detector's backbone from a classifier's weights file (this package's, torchvision's
    or timm's), as torchvision's ``weights_backbone`` does: the stem and the blocks up to the last
    tap are loaded, the classifier's head is left out, the extra layers and the prediction heads
    keep their initialisation. Returns what was done and adapted (a grey stem, say); a file of
    another architecture or width fails with the tensor named.
    """
    if not isinstance(detector, SSD):
        raise ValueError(f"a backbone from a classifier's weights is for detectors, not {type(detector).__name__}")
    state_dict = read_checkpoint(path)["model"]
    if any(key.startswith(("backbone.", "head.")) for key in state_dict):
        raise ValueError(f"{path} holds a detector's weights; a backbone starts from a classifier's "
                         "(a detector's own weights are loaded with weights=)")
    classifier = MobileNet(detector.backbone_spec, width_mult=detector.width_mult, num_classes=1)
    try:
        converted, notes = convert_state_dict(state_dict, classifier, finetune=True)
    except ValueError as e:
        reduced = getattr(getattr(detector, "args", None), "reduced_tail", False)
        hint = ("; classifiers have the full tail: for one of this architecture, leave out reduced_tail"
                if reduced else "")
        raise ValueError(f"{path}: {e} (as the backbone of a detector on {detector.spec.backbone}{hint})") from None
    own = detector.backbone.state_dict()
    state = {k: v for k, v in converted.items() if k in own}  # blocks past the last tap left out
    detector.backbone.load_state_dict(state, strict=False)
    adapted = [n for n in notes if not n.startswith("classifier re-initialised")]
    return [f"backbone from a classifier: {len(state)} tensors loaded, its head left out", *adapted]
