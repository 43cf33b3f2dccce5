"""The samples a .tflite fold is proven on (edgebn.fold.tflite.samples), shaped for its input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tflite_forms import conv_bn, nchw_input_bn

from edgebn.data.dataset import DataSpec
from edgebn.errors import EdgebnError
from edgebn.fold.tflite.samples import image_layout, tflite_samples
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.writer import empty_model


def _folder(root: Path, colours: dict[str, tuple[int, int, int]], size: int = 6) -> Path:
    """A folder per class, three images each of one flat colour."""
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (size, size), rgb).save(root / name / f"{i}.png")
    return root


def test_the_layout_of_nhwc_and_nchw_inputs():
    nhwc = parse_tflite(conv_bn(0), "conv_bn.tflite")  # input (1, 6, 6, 3)
    nchw = parse_tflite(nchw_input_bn(0), "nchw.tflite")  # input (1, 4, 6, 6)
    assert image_layout(nhwc) == ((6, 6, 3), False)
    assert image_layout(nchw) == ((4, 6, 6), False)  # 4 channels first: no image has 4
    with pytest.raises(EdgebnError, match="images need a model with one 4-D input"):
        image_layout(parse_tflite(empty_model(), "empty.tflite"))


def test_an_image_folder_is_read_at_the_input_size_and_laid_out_nchw(tmp_path):
    """A model taking (1, 3, 6, 6): a flat (10, 20, 30) image is x = raw / 255, channel first."""
    from edgebn.tflite.writer import Graph

    g = Graph()
    x = g.tensor([1, 3, 6, 6])
    y = g.tensor([1, 3, 6, 6])
    g.operator("RELU", [x], [y])
    model = parse_tflite(g.pack([x], [y]), "nchw3.tflite")
    assert image_layout(model) == ((6, 6, 3), True)
    spec = DataSpec(data_dir=_folder(tmp_path / "images", {"a": (10, 20, 30), "b": (0, 0, 0)}))
    x = tflite_samples(model, spec)
    assert x.shape == (6, 3, 6, 6) and x.flags.c_contiguous
    flat = x[np.argmax(x.reshape(6, -1).max(axis=1))]  # an image of class a
    assert np.allclose(flat[:, 2, 3], np.float32([10, 20, 30]) / np.float32(255))


def test_an_npz_is_taken_as_it_is_and_no_data_means_random_inputs(tmp_path):
    model = parse_tflite(conv_bn(0), "conv_bn.tflite")
    assert tflite_samples(model, None) is None
    assert tflite_samples(model, DataSpec()) is None  # a named dataset: not for a .tflite
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.arange(2 * 6 * 6 * 4, dtype=np.float32).reshape(2, 6, 6, 4))
    assert np.array_equal(tflite_samples(model, DataSpec(npz=npz)),
                          np.arange(288, dtype=np.float32).reshape(2, 6, 6, 4))
