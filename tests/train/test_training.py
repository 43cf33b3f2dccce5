"""Transfer learning on an image folder: a frozen backbone whose BN statistics never move,
and fine-tuning of its top (the builds: tests/zoo/test_backbones_builds.py).
"""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from edgebn.data.dataset import DataSpec
from edgebn.data.images import Color
from edgebn.train.training import TrainConfig, train
from edgebn.zoo.backbones import find_backbone
from edgebn.zoo.models import Arch

runner = CliRunner()
SIZE = 64
ALPHA = 0.35


def _bn_state(backbone) -> dict[str, list[np.ndarray]]:
    import keras

    return {layer.name: [np.array(w) for w in layer.weights] for layer in backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)}


def _kernels(backbone) -> list[np.ndarray]:
    return [np.array(layer.kernel) for layer in backbone.layers if hasattr(layer, "kernel")]


def test_frozen_backbone_keeps_bn_statistics_through_training_and_fine_tuning(photos,
                                                                              mobilenet_weights):
    folder, weights = photos, mobilenet_weights
    from edgebn.zoo.backbones import build_backbone

    spec = DataSpec(data_dir=folder, image_size=SIZE, color=Color.rgb, scale=1.0)
    ds = spec.load(stream=True)
    assert ds.streams is not None and len(ds.x_val) == 0  # streamed: nothing decoded but a sample
    before = build_backbone(Arch.mobilenet_v2, (SIZE, SIZE, 3), ALPHA, str(weights))
    config = TrainConfig(arch=Arch.mobilenet_v2, alpha=ALPHA, weights=str(weights), epochs=8,
                         fine_tune_epochs=2, batch_size=16, patience=8)
    result = train(ds, config)
    after = find_backbone(result.model)
    assert result.fine_tune_epochs_run >= 1
    moved = {name: [np.abs(a - b).max() for a, b in zip(ws, _bn_state(after)[name], strict=True)]
             for name, ws in _bn_state(before).items()}
    assert len(moved) == 52 and all(max(d) == 0.0 for d in moved.values()), moved
    # Fine-tuning did train the backbone's top, and only its top.
    k0, k1 = _kernels(before), _kernels(after)
    changed = [not np.array_equal(a, b) for a, b in zip(k0, k1, strict=True)]
    assert changed[-1] and not changed[0]
    assert result.test_accuracy > 0.5  # three classes: chance is 1/3
