"""How an image becomes a model input; stored in checkpoints so predict matches training."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop (or zero-pad) to ``crop``, normalise.

    The default is the ImageNet evaluation transform of torchvision and timm (256 -> 224).
    """

    crop: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def imagenet(cls, input_size: int = 224) -> Preprocess:
        return cls(crop=input_size, resize=round(input_size / 0.875))

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(crop=d["crop"], resize=d["resize"], mean=tuple(d["mean"]), std=tuple(d["std"]))

    def to_dict(self) -> dict:
        return asdict(self)

    def transform(self) -> v2.Compose:
        """PIL image -> normalised float tensor of shape (channels, crop, crop)."""
        return v2.Compose([
            v2.PILToTensor(),
            v2.Resize(self.resize, antialias=True),
            v2.CenterCrop(self.crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """Read one image file (any mode) into a model-ready tensor, with a one-line error if unreadable."""
        return self.transform()(open_image(path, grey=self.channels == 1))


def open_image(path: str | os.PathLike, grey: bool = False) -> Image.Image:
    """Open and fully decode an image as RGB (or L), naming the file if it is missing or broken."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("L" if grey else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
