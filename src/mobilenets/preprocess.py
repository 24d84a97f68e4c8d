"""How an image becomes model input; stored in checkpoints so predict and export match training.

Two stages, shared by training, evaluation and prediction: per image, uint8 resize and centre
crop (``Preprocess.image_transform``); per batch, float conversion, normalisation and an optional
resize to the model's input size (``BatchPreprocess``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)  # ImageNet's, averaged over the channels


class BatchPreprocess(torch.nn.Module):
    """uint8 batch (N, C, h, w) -> normalised float batch at ``input_size``, channels-last if asked."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: int, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("inv_std", 1 / (torch.tensor(std).view(1, -1, 1, 1) * 255), persistent=False)
        self.input_size = input_size
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) * self.inv_std
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = torch.nn.functional.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop (or zero-pad) to ``crop``, normalise, and
    resize to ``input_size`` when that differs from ``crop`` (small images upscaled, rho > crop/224).

    The default is the ImageNet evaluation transform of torchvision and timm (256 -> 224).
    """

    crop: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int | None = None

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def size(self) -> int:
        """The side of the model input."""
        return self.input_size or self.crop

    @classmethod
    def imagenet(cls, input_size: int = 224, channels: int = 3) -> Preprocess:
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN * channels, GREY_STD * channels)
        return cls(crop=input_size, resize=round(input_size / 0.875), mean=mean, std=std)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(d["crop"], d["resize"], tuple(d["mean"]), tuple(d["std"]), d.get("input_size"))

    def to_dict(self) -> dict:
        return asdict(self)

    def image_transform(self) -> v2.Compose:
        """uint8 image tensor -> uint8 tensor of shape (channels, crop, crop)."""
        return v2.Compose([v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.crop)])

    def batch_transform(self, channels_last: bool = False) -> BatchPreprocess:
        return BatchPreprocess(self.mean, self.std, self.size, channels_last)

    def load(self, path: str | os.PathLike) -> Tensor:
        """Read one image file (any mode) as a uint8 tensor ready for ``batch_transform``."""
        return self.prepare(open_image(path, grey=self.channels == 1))

    def prepare(self, img: Image.Image) -> Tensor:
        """A decoded image (RGB, or L for one channel) -> uint8 tensor ready for ``batch_transform``."""
        return self.image_transform()(v2.functional.pil_to_tensor(img))

    def load_batch(self, paths: Sequence[str | os.PathLike]) -> Tensor:
        """Image files -> one float model-input batch."""
        return self.batch_transform()(torch.stack([self.load(p) for p in paths]))


def to_model_mode(img: Image.Image, grey: bool = False) -> Image.Image:
    """Decode ``img`` as RGB (or L). 16- and 32-bit grey images are scaled to 8 bits: PIL's own
    conversion clips them at 255, which turns a 16-bit PNG almost white."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("L" if grey else "RGB")


def open_image(path: str | os.PathLike, grey: bool = False) -> Image.Image:
    """Open and fully decode an image as RGB (or L), naming the file if it is missing or broken."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not an image")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return to_model_mode(img, grey)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


class ImageReader:
    """Opens the images of a dataset by index; one that cannot be read is reported once, by name,
    and gives ``None`` from then on without being read again.

    The flags live in shared memory, so the worker processes of a ``DataLoader``, forked anew every
    epoch, see what earlier ones and the main process found.
    """

    def __init__(self, count: int, grey: bool = False) -> None:
        self.grey = grey
        self.unreadable = torch.zeros(count, dtype=torch.bool).share_memory_()

    def open(self, index: int, path: str | os.PathLike) -> Image.Image | None:
        if self.unreadable[index]:
            return None
        try:
            return open_image(path, grey=self.grey)
        except (ValueError, FileNotFoundError) as e:
            print(f"warning: {e}; skipped", file=sys.stderr)
            self.unreadable[index] = True
            return None
