"""A TensorFlow SavedModel on the .tflite route (edgebn.saved_model): the directory checked,
its signature's one input and one output found, TensorFlow's converter's file written, and the
SavedModel's own outputs computed in chunks, on ``y = x·[2, −1] + [1, 0.5]`` saved here."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgebn.errors import InvalidModelError
from edgebn.saved_model import (
    CHUNK,
    DEFAULT_SIGNATURE,
    MAX_GRAPH_BYTES,
    SavedModelSource,
    check_saved_model,
    convert,
    is_saved_model,
    load,
    reference,
)


@pytest.fixture(scope="module")
def affine_dir(tmp_path_factory):
    """``serving_default``: x [None, 2] → {"y": x·[2, −1] + [1, 0.5]}; ``two``: two outputs."""
    import tensorflow as tf

    class Affine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * tf.constant([2.0, -1.0]) + tf.constant([1.0, 0.5])}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def two(self, x):
            return {"a": x, "b": -x}

    module = Affine()
    path = tmp_path_factory.mktemp("saved") / "affine"
    tf.saved_model.save(module, str(path), signatures={DEFAULT_SIGNATURE: module.serve,
                                                       "two": module.two})
    return path


def test_a_saved_model_is_a_directory_with_saved_model_pb(tmp_path, affine_dir):
    assert is_saved_model(affine_dir) and is_saved_model(str(affine_dir))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    assert not is_saved_model(tmp_path / "empty") and not is_saved_model(tmp_path / "file")


def test_the_directory_check_says_what_is_wrong(tmp_path):
    with pytest.raises(InvalidModelError, match="nothing: not a directory"):
        check_saved_model(tmp_path / "nothing")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InvalidModelError, match="file: not a directory"):
        check_saved_model(tmp_path / "file")
    d = tmp_path / "model"
    d.mkdir()
    with pytest.raises(InvalidModelError, match="a directory without saved_model.pb"):
        check_saved_model(d)
    with open(d / "saved_model.pb", "wb") as f:  # sparse: one byte over the cap, none written
        f.truncate(MAX_GRAPH_BYTES + 1)
    with pytest.raises(InvalidModelError, match=f"holds {MAX_GRAPH_BYTES + 1} bytes; at most "
                                                f"{MAX_GRAPH_BYTES} are read"):
        check_saved_model(d)
    os.truncate(d / "saved_model.pb", MAX_GRAPH_BYTES)
    check_saved_model(d)  # at the cap: accepted


def test_a_damaged_graph_is_one_error_line(tmp_path):
    d = tmp_path / "damaged"
    d.mkdir()
    (d / "saved_model.pb").write_bytes(b"not a protocol buffer")
    with pytest.raises(InvalidModelError, match="cannot load as a SavedModel"):
        load(d)


def test_the_signature_gives_its_input_and_output_names(affine_dir):
    _, input_name, output_name, fn = load(affine_dir)
    assert (input_name, output_name) == ("x", "y")
    y = fn(x=np.array([[1.0, 2.0]], np.float32))["y"].numpy()
    assert y.tolist() == [[3.0, -1.5]]


def test_a_missing_or_two_output_signature_is_refused(affine_dir):
    with pytest.raises(InvalidModelError) as missing:
        load(affine_dir, "nope")
    assert "no signature 'nope'. Received signatures: ['serving_default', 'two']" in \
        str(missing.value)
    assert missing.value.option == "signature"
    with pytest.raises(InvalidModelError, match="signature 'two' takes 1 inputs and gives 2 "
                                                "outputs; a classifier's takes one image"):
        load(affine_dir, "two")


def test_convert_writes_the_converters_file_and_references_compute_in_chunks(affine_dir,
                                                                            tmp_path):
    from edgebn.runtime.backends import load_interpreter

    out = tmp_path / "affine.tflite"
    source = convert(affine_dir, out)
    assert isinstance(source, SavedModelSource)
    assert (source.signature, source.input_name, source.output_name) == (DEFAULT_SIGNATURE,
                                                                         "x", "y")
    assert out.read_bytes() == source.converted.data and source.convert_s > 0
    assert source.route_json() == {
        "format": "saved_model", "path": str(affine_dir), "signature": "serving_default",
        "input": "x", "output": "y", "converted_by": "tf.lite.TFLiteConverter.from_saved_model",
        "verified_against": "the SavedModel's own outputs (TensorFlow)"}
    # the truth: 2·x₀ + 1 and 0.5 − x₁, over more rows than one chunk holds
    x = np.stack([np.arange(2 * CHUNK + 2), -np.arange(2 * CHUNK + 2)], axis=1) / 4
    want = np.stack([2 * x[:, 0] + 1, 0.5 - x[:, 1]], axis=1)
    got = reference(source)(x)
    assert got.dtype == np.float64 and got.shape == (2 * CHUNK + 2, 2)
    np.testing.assert_array_equal(got, want)
    interp, _ = load_interpreter(source.converted, xnnpack=False)
    interp.set_tensor(interp.get_input_details()[0]["index"], np.float32([[1.0, 2.0]]))
    interp.invoke()
    assert interp.get_tensor(interp.get_output_details()[0]["index"]).tolist() == [[3.0, -1.5]]
