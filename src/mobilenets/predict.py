"""Load a model for inference from a name, a weights file or a training checkpoint; predict."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .evaluate import with_tta
from .preprocess import Preprocess
from .registry import ModelArgs, create_model
from .weights import load_weights, read_checkpoint


@dataclass
class LoadedModel:
    """A model in eval mode with what it needs to read images and name its outputs."""

    model: nn.Module
    preprocess: Preprocess
    class_names: list[str]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's (offline) model metadata."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(
    checkpoint: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    weights: str | os.PathLike | None = None,
    width_mult: float = 1.0,
    num_classes: int = 1000,
    input_size: int | None = None,
) -> LoadedModel:
    """Build the model of a training checkpoint, or ``model`` with optional ``weights``.

    A checkpoint (or an own weights file) brings its model arguments, class names and
    preprocessing; otherwise the ImageNet conventions of torchvision and timm apply.
    """
    if checkpoint is None and model is None:
        raise ValueError("give a checkpoint or a model name")
    if checkpoint is not None and not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    source = checkpoint or weights
    ckpt = read_checkpoint(source) if source is not None else {}
    if checkpoint is not None and not ckpt.get("model_args"):
        raise ValueError(f"{checkpoint} holds weights but no model arguments (training checkpoints and exported "
                         f"files have them); predict and export take --model NAME --weights {checkpoint}")
    if ckpt.get("model_args") and (checkpoint is not None or model == ckpt["model_args"]["name"]):
        args = ModelArgs(**ckpt["model_args"])
    else:
        args = ModelArgs(model, width_mult, num_classes)
    net = create_model(**args.to_dict())
    if source is not None:
        load_weights(net, source)
    net.eval()
    if ckpt.get("preprocess"):
        preprocess = Preprocess.from_dict(ckpt["preprocess"])
    else:
        preprocess = Preprocess.imagenet(input_size or 224, args.in_chans)
    if ckpt.get("class_names"):
        names = list(ckpt["class_names"])
    elif args.num_classes == 1000:
        names = imagenet_class_names()
    else:
        names = [f"class {i}" for i in range(args.num_classes)]
    return LoadedModel(net, preprocess, names)


@torch.no_grad()
def predict(loaded: LoadedModel, paths: Sequence[str | os.PathLike], top_k: int = 5, tta: str | None = None
            ) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file; ``tta``: the views to average
    (``evaluate.tta_views``), or None for the image alone."""
    forward = with_tta(loaded.model, tta) if tta else loaded.model
    probs = forward(loaded.preprocess.load_batch(paths)).softmax(dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        [(loaded.class_names[i], float(v)) for v, i in zip(vs.tolist(), ids.tolist())]
        for vs, ids in zip(values, indices)
    ]
