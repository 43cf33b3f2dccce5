"""The archs as rows (edgebn.zoo.models): the zoo models and the backbones."""

from __future__ import annotations

import numpy as np
import pytest

from edgebn.zoo.models import ARCHS, BACKBONE_ARCHS, BACKBONES, Arch, arch_spec


def test_the_arch_rows_are_consistent():
    import keras

    for s in ARCHS:
        assert (s.build is None) == (s.backbone is not None) == (not s.twin), s.name
        if s.backbone is not None:
            b = s.backbone
            assert callable(getattr(keras.applications, b.application)), s.name
            assert b.min_size <= b.image_size <= b.max_size, s.name
    assert BACKBONES[Arch.mobilenet_v2].rescale and not BACKBONES[Arch.efficientnet_b0].alpha


@pytest.mark.parametrize("arch", sorted(BACKBONE_ARCHS, key=list(Arch).index),
                         ids=lambda a: a.value)
def test_every_backbone_row_builds_at_its_smallest_size_taking_raw_pixels(arch):
    """Built as its row says: the application, a Rescaling in front only where the row asks."""
    from edgebn.zoo.backbones import build_transfer, find_backbone

    row = arch_spec(arch).backbone
    side = row.min_size
    model = build_transfer(arch, (side, side, 3), 3, alpha=0.75 if row.alpha else 1.0)
    assert model.output_shape == (None, 3) and model.name == arch.value.replace("-", "_")
    assert ("rescale" in [la.name for la in model.layers]) is row.rescale
    assert find_backbone(model) is not None
    x = np.random.default_rng(0).uniform(0, 255, (2, side, side, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)).sum(axis=1), 1.0, rtol=1e-5)
