"""A bundle from a build directory (edgebn.pipeline.rebundle), from its checked report."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.pipeline.rebundle import source_from_build_dir

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "digits-cnn"


def _build_dir(root: Path, samples: np.ndarray | None, **changes) -> Path:
    """A copy of the committed digits-cnn build, its report changed by ``changes``."""
    root.mkdir()
    shutil.copy(COMMITTED / "model.tflite", root / "model.tflite")
    doc = json.loads((COMMITTED / "report.json").read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = doc
        for part in path:
            target = target[part]
        target[key] = value
    (root / "report.json").write_text(json.dumps(doc))
    if samples is not None:
        np.save(root / "samples.npy", samples)
    return root


def test_the_source_is_the_reports_model_labels_preprocessing_and_golden_samples(tmp_path):
    d = _build_dir(tmp_path / "b", np.ones((20, 8, 8, 1), np.float32))
    source = source_from_build_dir(d)
    assert source.arch == "cnn" and source.labels == tuple("0123456789")
    assert source.preprocessing.input_shape == (8, 8, 1) and 0.9 < source.test_accuracy <= 1
    assert source.golden_inputs.shape[1:] == (8, 8, 1) and source.golden_inputs.dtype == np.float32
    assert source.model.path.endswith("model.tflite")


def test_what_a_bundle_cannot_be_made_of_is_refused(tmp_path):
    with pytest.raises(EdgebnError, match="samples.npy: missing"):
        source_from_build_dir(_build_dir(tmp_path / "a", None))
    with pytest.raises(InvalidModelError, match=r"shape \[3, 8, 8\]"):
        source_from_build_dir(_build_dir(tmp_path / "b", np.ones((3, 8, 8), np.float32)))
    with pytest.raises(InvalidModelError, match="no dataset.preprocessing"):
        source_from_build_dir(_build_dir(tmp_path / "c", np.ones((3, 8, 8, 1), np.float32),
                                         dataset__preprocessing=None))
