"""Hostile or malformed data files: each is refused with one line naming the file and the fault.

Issue 22, item 6. Nothing here trains a model: every refusal happens before training.
"""

from __future__ import annotations

import io
import os
import random
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_image_folder
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.data.arrays import load_labelled, load_samples
from edgebn.data.dataset import DataSpec
from edgebn.data.images import Color
from edgebn.errors import DatasetError, EdgebnError, InvalidModelError
from edgebn.tflite.quantization import make_inputs

runner = CliRunner()
# (1, 8, 8, 1)
TFLITE = Path(__file__).resolve().parents[2] / "models" / "digits-cnn" / "model.tflite"
MiB = 2**20


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "\r" not in text, text
    text.encode("utf-8")  # printable: no lone surrogates from undecodable file names
    return text


def _npy_header(shape, descr="<f4", version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    """The peak of Python and NumPy allocations while ``fn`` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        error = None
    except Exception as exc:  # the caller inspects it
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


# ---------------------------------------------------------------- image folders


@pytest.fixture
def photos(tmp_path):
    return write_image_folder(tmp_path / "photos", per_class=6, size=10)


def _spec(root):
    return DataSpec(data_dir=root, image_size=8, color=Color.rgb)


def test_a_file_name_that_is_not_utf8_is_read_and_streamed(photos):
    """TensorFlow takes file names as UTF-8 text: an undecodable one is handed over as bytes."""
    os.rename(os.fsencode(photos / "red" / "00001.png"),
              os.fsencode(photos / "red") + b"/caf\xe9.png")
    ds = _spec(photos).load(stream=True)
    seen = 0
    for files in (ds.streams.train, ds.streams.val, ds.streams.test):
        batches = list(files.tf_dataset(batch_size=4).as_numpy_iterator())
        x = np.concatenate([b[0] for b in batches])
        np.testing.assert_array_equal(x, files.load())
        seen += len(x)
    assert seen == 18


def test_a_class_folder_name_that_is_not_utf8_is_refused_by_name(photos):
    os.rename(os.fsencode(photos / "red"), os.fsencode(photos) + b"/r\xe9d")
    with pytest.raises(DatasetError) as exc:
        _spec(photos).load(stream=True)
    text = _one_line(exc)
    assert "r\\xe9d" in text and "UTF-8" in text


def test_an_unreadable_image_with_a_newline_and_bad_bytes_in_its_name_is_one_line(photos):
    bad = os.fsencode(photos / "green") + b"/bro\nken\xff.png"
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image") as exc:
        _spec(photos).load(stream=True)
    assert "bro\\nken\\xff.png" in _one_line(exc)


def test_cli_train_refuses_a_class_folder_name_that_is_not_utf8(photos, tmp_path):
    os.rename(os.fsencode(photos / "blue"), os.fsencode(photos) + b"/bl\xfce")
    result = runner.invoke(app, ["train", "--data-dir", str(photos), "--epochs", "1",
                                 "--out", str(tmp_path / "m.keras")])
    _one_error_line(result, "bl\\xfce", "UTF-8")
    assert not (tmp_path / "m.keras").exists()


def test_a_folder_too_small_to_split_with_every_class_in_each_split_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "tiny", per_class=4, size=10)  # 12 images, 3 classes
    for stream in (True, False):
        with pytest.raises(DatasetError, match="12 samples in 3 classes cannot be split") as exc:
            _spec(root).load(stream=stream)
        _one_line(exc)


# ---------------------------------------------------------------- .npy / .npz files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("head", [b"PK\x03\x04" + b"garbage" * 20, b"PK" + bytes(100),
                                  b"PK\x05\x06" + bytes(18)])
def test_junk_starting_with_pk_is_refused(tmp_path, head):
    p = _write(tmp_path / "junk.npz", head)
    with pytest.raises(DatasetError, match="junk.npz") as exc:
        load_samples(p)
    _one_line(exc)
    with pytest.raises(DatasetError, match="junk.npz"):
        DataSpec(npz=p).load()


def test_cli_build_and_bench_refuse_a_junk_npz(tmp_path):
    p = _write(tmp_path / "junk.npz", b"PK\x03\x04" + b"garbage" * 20)
    _one_error_line(runner.invoke(app, ["build", "--data", str(p), "--out",
                                        str(tmp_path / "b"), "--epochs", "1"]), "junk.npz")
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data", str(p)]), "junk.npz")


def test_empty_x_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 1), np.float32))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32),
             y=np.zeros(0, np.int64))
    for name in ("empty.npy", "empty.npz"):
        with pytest.raises(DatasetError, match=f"{name}.*no samples"):
            load_samples(tmp_path / name)
    with pytest.raises(DatasetError, match="empty.npz.*no samples"):
        DataSpec(npz=tmp_path / "empty.npz").load()
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data",
                                        str(tmp_path / "empty.npy")]), "no samples")


def test_bench_never_swaps_empty_inputs_for_random_ones():
    with pytest.raises(DatasetError, match="no samples"):
        make_inputs((1, 8, 8, 1), np.float32, None, 2, data=np.zeros((0, 8, 8, 1), np.float32))


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    npy = _write(tmp_path / "huge.npy", _npy_header((10**11,)) + bytes(64))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", _npy_header((10**11, 8, 8, 1)) + bytes(64))
        z.writestr("y.npy", _npy_header((10**11,), "<i8") + bytes(64))
    for p in (npy, tmp_path / "huge.npz"):
        with pytest.raises(DatasetError, match=rf"{p.name}.*2\*\*31") as exc:
            load_samples(p)
        _one_line(exc)
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data", str(npy)]),
                    "huge.npy", "2**31")


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_a_header_declaring_more_than_the_file_holds_is_refused_before_allocating(
        tmp_path, version):
    """A 1 GiB array declared in a 200-byte file: refused by size, nothing allocated."""
    header = _npy_header((2**28,), version=version)
    npy = _write(tmp_path / "lying.npy", header + bytes(64))
    with zipfile.ZipFile(tmp_path / "lying.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((2**24, 4, 4, 1), version=version) + bytes(64))
    for p in (npy, tmp_path / "lying.npz"):
        peak, error = _peak_bytes(lambda p=p: load_samples(p))
        assert isinstance(error, DatasetError), error
        assert p.name in str(error) and "holds" in str(error), str(error)
        assert peak < 16 * MiB, peak
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data", str(npy)]),
                    "lying.npy", "holds")


def test_a_npz_member_claiming_a_deflate_ratio_beyond_deflate_is_refused(tmp_path):
    """The member's declared size is checked against what its compressed bytes can hold."""
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((2**26, 4, 1, 1)) + bytes(64))
    raw = bytearray((tmp_path / "bomb.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "bomb.npz") as z:
        info = z.getinfo("x.npy")
    central = raw.rindex(b"PK\x01\x02")  # the central directory's uncompressed size: 1 GiB
    raw[central + 24:central + 28] = (2**30 + len(_npy_header((1,)))).to_bytes(4, "little")
    local = info.header_offset
    raw[local + 22:local + 26] = raw[central + 24:central + 28]
    p = _write(tmp_path / "bomb.npz", bytes(raw))
    peak, error = _peak_bytes(lambda: load_samples(p))
    assert isinstance(error, DatasetError) and "bomb.npz" in str(error), error
    assert peak < 16 * MiB, peak


def test_samples_of_the_wrong_rank_are_refused(tmp_path):
    np.save(tmp_path / "rank2.npy", np.ones((64, 64), np.float32))  # 64 values: 8x8x1
    x = load_samples(tmp_path / "rank2.npy")
    with pytest.raises(DatasetError, match=r"\[64\].*\[8, 8, 1\]"):
        make_inputs((1, 8, 8, 1), np.float32, None, 2, data=x)
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data",
                                        str(tmp_path / "rank2.npy")]), "[64]", "[8, 8, 1]")


def test_complex_samples_are_refused(tmp_path):
    np.save(tmp_path / "complex.npy", np.ones((4, 8, 8, 1), np.complex64) * (1 + 2j))
    with pytest.raises(DatasetError, match="complex.npy.*complex"):
        load_samples(tmp_path / "complex.npy")
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data",
                                        str(tmp_path / "complex.npy")]), "complex")


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e300])  # 1e300: beyond float32
def test_non_finite_samples_are_refused(tmp_path, value):
    x = np.ones((4, 8, 8, 1), np.float64)
    x[2, 3, 4, 0] = value
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(4) % 2)
    with pytest.raises(DatasetError, match="nan.npz.*NaN or infinity"):
        DataSpec(npz=tmp_path / "nan.npz").load()
    _one_error_line(runner.invoke(app, ["bench", str(TFLITE), "--data",
                                        str(tmp_path / "nan.npz")]), "NaN or infinity")


def test_labels_that_are_not_a_list_of_names_are_refused(tmp_path):
    x = np.ones((12, 8, 8, 1), np.float32)
    np.savez(tmp_path / "l.npz", x=x, y=np.arange(12) % 2, labels=np.array("cat"))
    with pytest.raises(DatasetError, match="l.npz.*'labels'"):
        DataSpec(npz=tmp_path / "l.npz").load()
    (tmp_path / "names.txt").write_bytes(b"cat\n\xffdog\n")
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(12) % 2)
    with pytest.raises(DatasetError, match="names.txt.*UTF-8"):
        DataSpec(npz=tmp_path / "ok.npz", labels=tmp_path / "names.txt").load()


def test_a_class_index_beyond_the_limit_is_refused(tmp_path):
    np.savez(tmp_path / "y.npz", x=np.ones((12, 8, 8, 1), np.float32),
             y=(np.arange(12) % 2) * 2_000_000)
    with pytest.raises(DatasetError, match=r"y.npz.*class"):
        DataSpec(npz=tmp_path / "y.npz").load()


# ---------------------------------------------------------------- .keras archives


def _keras_zip(path: Path, members: dict[str, bytes | int]) -> Path:
    """A zip laid out like a .keras; an int member is that many bytes of JSON whitespace."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            if isinstance(body, bytes):
                z.writestr(name, body)
                continue
            with z.open(name, "w", force_zip64=True) as f:
                f.write(b"{")
                chunk = b" " * (4 * MiB)
                for _ in range(body // len(chunk)):
                    f.write(chunk)
                f.write(b"}")
    return path


def test_a_keras_config_that_inflates_beyond_the_limit_is_refused_before_extraction(tmp_path):
    from edgebn.zoo.keras_io import load_keras

    bomb = _keras_zip(tmp_path / "bomb.keras", {"metadata.json": b"{}",
                                                "config.json": 96 * MiB})
    assert bomb.stat().st_size < MiB
    peak, error = _peak_bytes(lambda: load_keras(bomb))
    assert isinstance(error, InvalidModelError), error
    assert "bomb.keras" in str(error) and "config.json" in str(error), str(error)
    assert "MiB" in str(error)
    assert peak < 16 * MiB, peak
    _one_error_line(runner.invoke(app, ["fold", str(bomb), "--out", str(tmp_path / "f.keras")]),
                    "bomb.keras", "config.json")
    _one_error_line(runner.invoke(app, ["convert", str(bomb)]), "bomb.keras")


def test_a_keras_archive_with_too_many_members_or_bytes_is_refused(tmp_path, monkeypatch):
    from edgebn.zoo import keras_io as train_mod

    many = _keras_zip(tmp_path / "many.keras", {f"assets/{i}": b"" for i in range(5000)})
    with pytest.raises(InvalidModelError, match="many.keras.*5000 members"):
        train_mod.load_keras(many)
    big = _keras_zip(tmp_path / "big.keras", {"config.json": b"{}",
                                              "model.weights.h5": bytes(3 * MiB)})
    monkeypatch.setattr(train_mod, "KERAS_MAX_BYTES", 2 * MiB)
    with pytest.raises(InvalidModelError, match="big.keras.*uncompressed"):
        train_mod.load_keras(big)


# ---------------------------------------------------------------- fuzz


def _seeds(tmp_path: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    x = rng.random((12, 4, 4, 1), dtype=np.float32)
    y = np.arange(12) % 2
    out = {}
    buf = io.BytesIO()
    np.save(buf, x)
    out["x.npy"] = buf.getvalue()
    for name, save in (("stored.npz", np.savez), ("deflated.npz", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, x=x, y=y, labels=np.array(["cat", "dog"]))
        out[name] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data or b"\0")
    kind = rng.randrange(5)
    if kind == 0:  # flip a few bytes, mostly in the headers
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(b), 160)) if rng.random() < 0.6 else rng.randrange(len(b))
            b[i] = rng.randrange(256)
    elif kind == 1:  # cut short
        del b[rng.randrange(len(b)):]
    elif kind == 2:  # insert junk
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:  # a digit of a header's shape or length changed
        digits = [i for i, c in enumerate(b[:4096]) if 0x30 <= c <= 0x39]
        if digits:
            b[rng.choice(digits)] = rng.choice(b"0123456789")
    else:  # a 4-byte field (sizes, offsets of the zip directory) set to an extreme
        i = rng.randrange(max(1, len(b) - 4))
        b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"])
    return bytes(b)


def test_fuzzed_npy_and_npz_bytes_end_in_data_or_a_dataset_error(tmp_path):
    rng = random.Random(22)
    seeds = _seeds(tmp_path)
    outcomes = {"data": 0, "refused": 0}
    for case in range(450):
        name = list(seeds)[case % len(seeds)]
        p = _write(tmp_path / f"case{case}{Path(name).suffix}", _mutate(seeds[name], rng))
        loaders = [lambda p=p: load_labelled(p, ("y", "labels"))]
        if p.suffix == ".npz":
            loaders.append(lambda p=p: DataSpec(npz=p).load())
        for load in loaders:
            try:
                load()
                outcomes["data"] += 1
            except EdgebnError as exc:
                assert "\n" not in str(exc), (case, str(exc))
                outcomes["refused"] += 1
        p.unlink()
    assert outcomes["data"] > 20 and outcomes["refused"] > 200, outcomes


def test_a_scalar_model_input_gets_random_values_and_refuses_samples():
    """Found by the fold fuzz on int8 files: an input of shape [] was an IndexError."""
    (x,) = make_inputs((), np.int8, (0.1, 0), 1)
    assert x.shape == () and x.dtype == np.int8
    with pytest.raises(DatasetError, match="scalar"):
        make_inputs((), np.float32, None, 1, data=np.zeros((4, 1), np.float32))
