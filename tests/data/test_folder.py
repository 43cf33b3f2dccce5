"""Image folders streamed through tf.data: same tensors as in memory, bounded, bad files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import write_image_folder

from edgebn.data import folder as folder_mod
from edgebn.data.dataset import TRAIN_SAMPLE, DataSpec
from edgebn.data.images import Color
from edgebn.errors import DatasetError
from edgebn.train.training import TrainConfig, train
from edgebn.zoo.models import Arch


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("f") / "photos", per_class=12, size=20)


def _spec(root, **kw):
    return DataSpec(data_dir=root, image_size=16, color=Color.rgb, **kw)


def test_a_streamed_folder_splits_by_file_and_decodes_only_a_sample(photos):
    ds = _spec(photos).load(stream=True)
    eager = _spec(photos).load()
    assert ds.counts == eager.counts and sum(ds.counts) == 36
    assert ds.to_json()["streamed"] is True and ds.to_json()["train"] == ds.counts[0]
    assert len(ds.x_train) == min(TRAIN_SAMPLE, ds.counts[0]) and len(ds.x_test) == 0
    np.testing.assert_array_equal(ds.y_train, ds.streams.train.labels[:len(ds.y_train)])
    full = ds.with_test()
    # The same seed splits the same files: the streamed test split is the eager one.
    np.testing.assert_array_equal(full.y_test, eager.y_test)
    np.testing.assert_array_equal(full.x_test, eager.x_test)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "from-disk"])
def test_the_pipeline_yields_the_tensors_of_the_in_memory_read(photos, monkeypatch, cache):
    if not cache:
        monkeypatch.setattr(folder_mod, "CACHE_BYTES", 0)
    files = _spec(photos, scale=1 / 127.5, offset=-1.0).load(stream=True).streams.train
    batches = list(files.tf_dataset(batch_size=5).as_numpy_iterator())
    assert [len(y) for _, y in batches][:-1] == [5] * (len(batches) - 1)
    x = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(x, files.load())  # same Pillow filter, same scaling
    assert x.min() >= -1.0 and x.max() <= 1.0
    shuffled = files.tf_dataset(batch_size=64, shuffle=True, seed=3)
    first, second = (next(iter(shuffled))[1].numpy() for _ in range(2))
    assert sorted(first) == sorted(files.labels) and not np.array_equal(first, second)


def test_a_file_that_is_not_an_image_is_refused_before_training(tmp_path):
    root = write_image_folder(tmp_path / "p", per_class=4, size=12)
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        _spec(root).load(stream=True)


def test_a_truncated_image_found_mid_stream_is_named(tmp_path):
    root = write_image_folder(tmp_path / "p", per_class=6, size=40)
    ds = _spec(root).load(stream=True)  # listed and sampled while the files were whole
    for f in (root / "green").iterdir():  # then cut short: headers intact, pixels missing
        f.write_bytes(f.read_bytes()[:120])
    with pytest.raises(DatasetError, match="cannot read image .*green"):
        train(ds, TrainConfig(arch=Arch.cnn, epochs=1))


def test_a_bad_image_in_the_test_split_is_named_too(tmp_path):
    """Training never reads the test split: its evaluation must name the file as well."""
    root = write_image_folder(tmp_path / "p", per_class=6, size=40)
    ds = _spec(root).load(stream=True)
    for f in ds.streams.test.paths:
        Path(f).write_bytes(Path(f).read_bytes()[:120])
    with pytest.raises(DatasetError, match="cannot read image"):
        train(ds, TrainConfig(arch=Arch.cnn, epochs=1))


def test_verify_reads_a_streamed_test_split_in_chunks(photos, monkeypatch):
    """The whole split is verified while only a chunk of it is decoded at a time."""
    from edgebn.convert import to_tflite
    from edgebn.runtime import accuracy as verify_mod

    monkeypatch.setattr(verify_mod, "CHUNK", 5)
    ds = _spec(photos).load(stream=True)
    trained = train(ds, TrainConfig(arch=Arch.cnn, epochs=1))
    ds = ds.with_test()
    tflite = to_tflite(trained.model, photos.parent / "m.tflite").model
    loaded = []
    real = folder_mod.ImageFiles.load
    monkeypatch.setattr(folder_mod.ImageFiles, "load",
                        lambda self: loaded.append(len(self)) or real(self))
    streamed = verify_mod.verify(tflite, *ds.test_split, trained.model)
    assert streamed.samples == ds.counts[2] and max(loaded) <= 5
    eager = _spec(photos).load()
    in_memory = verify_mod.verify(tflite, eager.x_test, eager.y_test, trained.model)
    assert streamed == in_memory
