import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from edgebn.data.dataset import DataSpec
from edgebn.data.images import Color, Resize
from edgebn.errors import DatasetError


def test_digits_split_is_stratified_seeded_and_preprocessed(digits):
    assert digits.to_json()["train"] + digits.to_json()["val"] + digits.to_json()["test"] == 1797
    assert digits.input_shape == (8, 8, 1) and digits.classes == 10
    for y in (digits.y_train, digits.y_val, digits.y_test):
        counts = np.bincount(y, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()  # every class in every split
    assert digits.x_train.dtype == np.float32
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() == 1.0
    again = DataSpec().load()
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    other = DataSpec(seed=1).load()
    assert not np.array_equal(other.y_test, digits.y_test)


def _image_folder(root, classes=("cat", "dog"), per_class=6, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_image_folder_loads_classes_resizes_and_scales(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    ds = DataSpec(data_dir=root, image_size=16, color=Color.rgb).load()
    assert ds.class_names == ("cat", "dog")
    assert ds.input_shape == (16, 16, 3)
    assert ds.x_train.shape[1:] == (16, 16, 3)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 12
    assert ds.x_test.max() <= 1.0
    gray = DataSpec(data_dir=root, image_size=8).load()
    assert gray.input_shape == (8, 8, 1)


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "no such directory"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "not a directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
    (lambda p: _image_folder(p / "one", classes=("only",)), "only one class"),
])
def test_bad_image_folders_are_refused(tmp_path, setup, message):
    with pytest.raises(DatasetError, match=message):
        DataSpec(data_dir=setup(tmp_path)).load()


def test_unreadable_image_is_named(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*broken\.png"):
        DataSpec(data_dir=root).load()


def test_too_few_samples_per_class(tmp_path):
    root = _image_folder(tmp_path / "imgs", per_class=2)
    with pytest.raises(DatasetError, match="at least 3 samples"):
        DataSpec(data_dir=root).load()


_KERAS_LOADER = textwrap.dedent("""
    import gzip, json, os, shutil, sys
    import numpy as np
    home = os.environ["KERAS_HOME"]
    rng = np.random.default_rng(0)

    def images(n): return rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    def labels(n): return np.arange(n, dtype=np.uint8) % 10

    # Fashion-MNIST: a cache filled beforehand, in the four gzipped IDX files Keras reads.
    fdir = os.path.join(home, "datasets", "fashion-mnist")
    os.makedirs(fdir)
    for name, n, kind in [("train-labels-idx1-ubyte.gz", 60, "l"),
                          ("train-images-idx3-ubyte.gz", 60, "i"),
                          ("t10k-labels-idx1-ubyte.gz", 30, "l"),
                          ("t10k-images-idx3-ubyte.gz", 30, "i")]:
        body = labels(n).tobytes() if kind == "l" else images(n).tobytes()
        with gzip.open(os.path.join(fdir, name), "wb") as f:
            f.write(b"\\0" * (8 if kind == "l" else 16) + body)

    # MNIST: nothing cached; the "network" serves a small fake archive.
    served = os.path.join(home, "served-mnist.npz")
    np.savez(served, x_train=images(60), y_train=labels(60), x_test=images(30), y_test=labels(30))
    import keras.src.utils.file_utils as fu
    calls = []
    def fake_urlretrieve(origin, target, *a, **k):
        calls.append(origin)
        if "fashion" in origin:
            raise AssertionError("fashion-mnist should come from the cache")
        shutil.copy(served, target)
    fu.urlretrieve = fake_urlretrieve
    fu.validate_file = lambda *a, **k: True  # Keras pins the real file's sha256

    from edgebn.data.dataset import DataSpec
    out = {}
    for name in ("mnist", "fashion-mnist"):
        ds = DataSpec(name).load()
        out[name] = ds.to_json() | {"max": float(ds.x_train.max())}
    out["downloads"] = calls
    print(json.dumps(out))
""")


def test_keras_datasets_load_through_keras_with_a_fake_cache_and_network(tmp_path):
    env = {"KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ":".join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KERAS_LOADER], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("mnist", "fashion-mnist"):
        assert out[name]["input_shape"] == [28, 28, 1]
        assert out[name]["test"] == 30  # the publisher's test split is kept as test
        assert out[name]["train"] + out[name]["val"] == 60
        assert out[name]["max"] <= 1.0
    assert out["fashion-mnist"]["class_names"][0] == "T-shirt/top"
    assert len(out["downloads"]) == 1 and out["downloads"][0].endswith("mnist.npz")


@pytest.mark.parametrize("resize", list(Resize))
def test_training_and_the_device_preprocess_an_image_to_the_same_tensor(tmp_path, resize):
    """The device's predict.py sees the pixels training saw: same filter, same scaling."""
    from edgebn.deploy.bundle import load_predict_module

    root = _image_folder(tmp_path / "imgs", size=(37, 53))
    spec = DataSpec(data_dir=root, image_size=12, color=Color.rgb, resize=resize)
    ds = spec.load()
    image = sorted((root / "cat").iterdir())[0]
    from edgebn.data.images import read_image

    trained_on = ds.preprocessing.apply(read_image(image, ds.preprocessing))
    device = load_predict_module().preprocess_image(
        str(image), {"preprocessing": ds.preprocessing.to_json()})
    assert device.dtype == trained_on.dtype == np.float32 and device.shape == (12, 12, 3)
    np.testing.assert_array_equal(device, trained_on)
    # ... and it is one of the split's own samples: the training pipeline really ran it.
    assert any(np.array_equal(trained_on, x) for x in
               np.concatenate([ds.x_train, ds.x_val, ds.x_test]))
    if resize is not Resize.bicubic:  # Pillow's default filter would give other pixels
        from PIL import Image

        with Image.open(image) as im:
            default = np.asarray(im.convert("RGB").resize((12, 12)), np.float32) / 255
        assert not np.array_equal(default, trained_on)
