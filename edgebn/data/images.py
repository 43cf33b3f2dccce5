"""Images as the model sees them: colour mode, resize filter, scale and offset (the bundle's
too)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from PIL import Image

from edgebn.documents import JsonDict

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class Color(str, Enum):
    grayscale = "grayscale"
    rgb = "rgb"

    @property
    def pil_mode(self) -> str:
        return "L" if self is Color.grayscale else "RGB"

    @property
    def channels(self) -> int:
        return 1 if self is Color.grayscale else 3


class Resize(str, Enum):
    """The filter that resizes an image to the model's input; the device uses the same one."""

    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"
    lanczos = "lanczos"
    box = "box"
    hamming = "hamming"


class Layout(str, Enum):
    """How the model's input tensor holds an image: (N, H, W, C), or PyTorch's (N, C, H, W).

    Images and samples are (H, W, C) everywhere in edgebn; an NCHW model's input is transposed
    at the interpreter, on the host and in the bundle's predict.py alike."""

    nhwc = "nhwc"
    nchw = "nchw"


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model inputs: ``x = raw * scale + offset``.

    An image file is first converted to ``color`` and resized to the input's height and
    width with ``resize`` (Pillow's filter of that name) on the training machine and on
    the device alike; its 8-bit pixels are mapped onto ``[0, raw_max]``.
    """

    input_shape: tuple[int, int, int]
    raw_max: float  # the largest raw pixel value (16 for digits, 255 for 8-bit images)
    scale: float
    offset: float = 0.0
    color: Color = Color.grayscale
    resize: Resize = Resize.bilinear
    source: str = "the dataset's"  # who decided scale and offset (the report says it)
    layout: Layout = Layout.nhwc  # the model input's layout (images are (H, W, C) here)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (raw.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(
            np.float32
        )

    def to_json(self) -> JsonDict:
        return {"input_shape": list(self.input_shape), "raw_max": self.raw_max,
                "scale": self.scale, "offset": self.offset, "color": self.color.value,
                "resize": self.resize.value, "source": self.source, "layout": self.layout.value}

    @classmethod
    def from_json(cls, doc: JsonDict) -> Preprocessing:
        return cls(tuple(doc["input_shape"]), float(doc["raw_max"]), float(doc["scale"]),
                   float(doc.get("offset", 0.0)), Color(doc.get("color", "grayscale")),
                   Resize(doc.get("resize", "bilinear")), str(doc.get("source", "unknown")),
                   Layout(doc.get("layout", "nhwc")))


def read_image(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """One image file -> raw pixels (H, W, C) float32 on [0, 255], as ``pre`` sizes them.

    The device's predict.py does the same steps (convert, resize with the same filter).
    """
    h, w, _ = pre.input_shape
    with Image.open(path) as im:
        im = im.convert(pre.color.pil_mode).resize((w, h), _pil_filter(pre.resize))
        arr = np.asarray(im, dtype=np.float32)
    return arr if arr.ndim == 3 else arr[..., None]


def _pil_filter(resize: Resize) -> int:
    return getattr(Image, resize.value.upper())
