"""scikit-learn's digits as 32 px RGB images: an image folder, and the same images as an .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digit_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Every digit as a (size, size, 3) uint8 RGB image (bilinear upscale of the 8x8), labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255 / 16)).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(p, "L").resize((size, size), Image.BILINEAR)
                                  .convert("RGB")) for p in pixels])
    return images, d.target.astype(np.int64)


def write_folder(root: Path, size: int = 32) -> Path:
    """One sub-folder per class, a PNG per digit."""
    from PIL import Image

    images, labels = digit_images(size)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{i:04d}.png")
    return root


def write_npz(path: Path, size: int = 32) -> Path:
    """The same images as raw pixels (0..255, float32) with their labels."""
    images, labels = digit_images(size)
    np.savez(path, x=images.astype(np.float32), y=labels)
    return path
