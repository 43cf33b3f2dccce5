"""The samples a .tflite fold is proven on, shaped for the file's input.

The fold and its proof are :mod:`edgebn.fold.tflite.tflite_fold` (no TensorFlow); this module
reads the samples the proof runs on: ``--data`` (an .npz's ``x`` or an .npy), or an image
folder read at the model's input size and colour, laid out NCHW when the model takes NCHW
(what litert-torch keeps from PyTorch).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgebn.data.arrays import load_samples
from edgebn.data.dataset import DataSpec
from edgebn.errors import EdgebnError
from edgebn.tflite.reader import TFLiteModel


def image_layout(model: TFLiteModel) -> tuple[tuple[int, int, int], bool]:
    """The model's image input as (height, width, channels), and whether it is laid out NCHW."""
    sg = model.subgraphs[0] if model.subgraphs else None
    if sg is None or len(sg.inputs) != 1 or len(sg.tensors[sg.inputs[0]].shape) != 4:
        raise EdgebnError(f"{model.path}: images need a model with one 4-D input")
    _, a, b, c = sg.tensors[sg.inputs[0]].shape
    if c not in (1, 3) and a in (1, 3):
        return (b, c, a), True
    return (a, b, c), False


def tflite_samples(model: TFLiteModel, spec: DataSpec | None) -> np.ndarray | None:
    """Samples shaped for ``model``'s input, or None (the proof then uses random inputs)."""
    if spec is None or (spec.npz is None and spec.data_dir is None):
        return None
    if spec.npz is not None:
        return load_samples(spec.npz)
    shape, nchw = image_layout(model)
    dataset = replace(spec.for_model(shape, None), split=False).load()
    x = dataset.x_test
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x
