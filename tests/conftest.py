"""Shared, session-scoped fixtures: each small model is trained and converted once."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One TensorFlow thread per test process: pytest-xdist already runs a worker per core, and
# TensorFlow's own pools on top spin for work (tests/zoo/test_backbones_scratch_v3.py: 80 CPU-s
# with one thread against 98 with the default, and faster in wall time, two workers running)
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pytest

from edgebn.tflite.writer import strip_names


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``heavy`` files first, the rest in path order: pytest-xdist (``--dist loadfile``)
    hands out files in the order collected, so the long builds start at once, side by side on
    two workers, instead of one of them starting last."""
    # a stable sort: each file's tests stay together, in their order
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.fixture(scope="session")
def digits():
    from edgebn.data.dataset import DataSpec

    return DataSpec().load()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("edgebn")


@pytest.fixture(scope="session")
def cnn(digits, workdir):
    """The default architecture, trained briefly, saved and converted (float32).

    The session's one training of the default cnn: builds and bundles start from it.
    """
    from edgebn.convert import to_tflite as convert
    from edgebn.train.training import TrainConfig, train
    from edgebn.zoo.keras_io import save_keras

    result = train(digits, TrainConfig(epochs=4, patience=4))
    keras_path = save_keras(result.model, workdir / "cnn.keras")
    converted = convert(result.model, workdir / "cnn.tflite")
    return {"result": result, "keras": keras_path, "tflite": converted.path}


@pytest.fixture(scope="session")
def cnn_twin(digits, workdir):
    from edgebn.convert import to_tflite as convert
    from edgebn.train.training import TrainConfig, train
    from edgebn.zoo.keras_io import save_keras

    result = train(digits, TrainConfig(bn=False, epochs=2, patience=2))
    keras_path = save_keras(result.model, workdir / "cnn_twin.keras")
    converted = convert(result.model, workdir / "cnn_twin.tflite")
    return {"result": result, "keras": keras_path, "tflite": converted.path}


@pytest.fixture(scope="session")
def pattern_files(workdir):
    """{(pattern, quantize, stripped): path} for every BN pattern, float32 and int8."""
    from patterns import PATTERNS, build_pattern, representative

    from edgebn.convert import to_tflite as convert

    files = {}
    for name in PATTERNS:
        model = build_pattern(name)
        for quantize in ("none", "int8"):
            path = workdir / f"pattern_{name}_{quantize}.tflite"
            convert(model, path, quantize, representative())
            files[(name, quantize, False)] = path
            stripped = workdir / f"pattern_{name}_{quantize}_stripped.tflite"
            stripped.write_bytes(strip_names(path.read_bytes()))
            files[(name, quantize, True)] = stripped
    return files


@pytest.fixture(scope="session")
def mlp_fitted(digits, workdir):
    """The textbook MLP after fit(): the converter folds all three BNs."""
    from edgebn.convert import to_tflite as convert
    from edgebn.train.training import TrainConfig, train
    from edgebn.zoo.models import Arch

    result = train(digits, TrainConfig(arch=Arch.mlp, epochs=2, patience=2))
    paths = {}
    for quantize in ("none", "int8"):
        path = workdir / f"mlp_{quantize}.tflite"
        convert(result.model, path, quantize, digits.x_train[:64])
        paths[quantize] = path
    return {"result": result, "paths": paths}


@pytest.fixture(scope="session")
def small_builds(cnn, tmp_path_factory):
    """The session's cnn built float32 and int8 (--model: no training, no bench, no twin)."""
    from edgebn.convert import ConvertOptions, Quantize
    from edgebn.pipeline.build import BuildConfig, build

    out = {}
    for quantize in ("none", "int8"):
        d = tmp_path_factory.mktemp(f"build-{quantize}")
        build(BuildConfig(out=d, model=cnn["keras"], convert=ConvertOptions(Quantize(quantize)),
                          run_bench=False))
        out[quantize] = d
    return out


@pytest.fixture(scope="session")
def bundles(small_builds, tmp_path_factory):
    from edgebn.pipeline.rebundle import bundle_build

    root = tmp_path_factory.mktemp("bundles")
    return {q: bundle_build(d, root / f"bundle-{q}").out for q, d in small_builds.items()}


@pytest.fixture(scope="session")
def profile_bundles(small_builds, tmp_path_factory):
    """The same builds bundled with --profile: one-operator models for predict.py --profile."""
    from edgebn.pipeline.rebundle import bundle_build

    root = tmp_path_factory.mktemp("profile-bundles")
    return {q: bundle_build(d, root / f"bundle-{q}", profile=True).out for q,
            d in small_builds.items()}


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A learnable 3-class colour folder at 64 px (synthetic), 40 images a class."""
    from synthetic import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("imgs") / "photos", per_class=40, size=64)


@pytest.fixture(scope="session")
def digits_rgb(tmp_path_factory):
    """scikit-learn's digits as a folder of 32 px RGB PNGs, one sub-folder per class."""
    from digits_images import write_folder

    return write_folder(tmp_path_factory.mktemp("digits") / "digits_rgb")


@pytest.fixture(scope="session")
def digits_rgb_npz(tmp_path_factory):
    """The same 32 px RGB digits as raw pixels in an .npz (x, y)."""
    from digits_images import write_npz

    return write_npz(tmp_path_factory.mktemp("digits-npz") / "digits32.npz")


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory):
    """'Pretrained' MobileNetV2 (alpha 0.35) weights in the ImageNet .h5 format: trained
    here on another folder of the same kind, nothing downloaded."""
    from synthetic import pretrained_weights, write_image_folder

    from edgebn.data.dataset import DataSpec
    from edgebn.data.images import Color

    other = write_image_folder(tmp_path_factory.mktemp("pre") / "other", per_class=30, size=64,
                               seed=1)
    ds = DataSpec(data_dir=other, image_size=64, color=Color.rgb, scale=1.0).load()
    return pretrained_weights(tmp_path_factory.mktemp("w") / "W.h5", ds.x_train, ds.y_train,
                              "mobilenet-v2", 0.35)


@pytest.fixture(scope="session")
def mobilenet_weights_untrained(tmp_path_factory):
    """MobileNetV2 (alpha 0.35) weights in the ImageNet .h5 format, random filters with BN
    statistics set from random images: cheap, for what needs a weights file, not features."""
    import numpy as np
    from synthetic import pretrained_weights

    images = np.random.default_rng(0).uniform(0, 255, (16, 64, 64, 3))
    return pretrained_weights(tmp_path_factory.mktemp("w0") / "W0.h5", images,
                              np.zeros(16, np.int64), "mobilenet-v2", 0.35, epochs=0)


@pytest.fixture(scope="module")
def sshds(tmp_path_factory):
    """Three sshds on 127.0.0.1 that accept one generated key; skipped with the reason if they
    cannot run."""
    from sshd_hosts import REAL_SSH, SSHD, _free_port, _start_sshd

    if not Path(SSHD).exists() or REAL_SSH is None:
        pytest.skip("openssh-server / openssh-client not installed (tools/install-system-deps "
                    "installs them)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    opts = ("StrictHostKeyChecking=no", f"UserKnownHostsFile={d / 'known_hosts'}",
            "LogLevel=ERROR")
    procs, servers = [], []
    for i in range(3):
        sub = d / f"sshd{i}"
        sub.mkdir()
        for name in ("host", "authorized_keys"):
            shutil.copy(d / name, sub / name)
        port = _free_port()
        procs.append(_start_sshd(sub, port))
        servers.append({"host": f"{user}@127.0.0.1", "port": port, "identity": d / "user",
                        "options": opts, "home": sub / "home"})
    yield servers
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(sshds):
    return sshds[0]
