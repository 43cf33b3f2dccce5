"""predict.py on hostile inputs: every file ends in a result (exit 0) or one line and exit 2."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from edgebn.deploy.bundle import load_predict_module

FUZZ_CASES = 500


@pytest.fixture(scope="module")
def predict():
    return load_predict_module()


@pytest.fixture(autouse=True)
def no_trust_file(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBN_TRUST", str(tmp_path / "no-trust-file"))


def run(predict, bundle_dir, capsys, *args):
    """predict.main in this process; (exit code, stdout, stderr)."""
    code = predict.main([*map(str, args), "--json"], root=str(bundle_dir))
    got = capsys.readouterr()
    return code, got.out, got.err


def _png(shape=(8, 8), mode="L", fmt="PNG", seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (*shape, 3) if mode == "RGB" else shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, fmt)
    return buf.getvalue()


def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize("name, content, needle", [
    ("text.png", b"hello, not an image", "not a readable image (UnidentifiedImageError"),
    ("cut.png", _png((64, 64))[:200], "not a readable image"),
    ("cut.jpg", _png((64, 64), "RGB", "JPEG")[:300], "not a readable image"),
    ("wrong.npy", _npy(np.zeros((3, 4, 4, 1), np.float32)), "inputs of shape [3, 4, 4, 1]"),
    ("empty.npy", _npy(np.zeros((0, 8, 8, 1), np.float32)), "N >= 1"),
    ("strings.npy", _npy(np.array(["a", "b"])), "dtype <U1, expected a float or integer"),
    ("complex.npy", _npy(np.zeros((8, 8, 1), np.complex64)), "dtype complex64"),
    ("object.npy", _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
     "not a readable .npy"),
    ("nan.npy", _npy(np.full((8, 8, 1), np.nan, np.float32)), "NaN or infinite"),
    ("inf.npy", _npy(np.full((2, 8, 8, 1), np.inf, np.float32)), "NaN or infinite"),
    ("huge.npy", _npy(np.full((8, 8, 1), 1e300)), "NaN or infinite"),
    ("cut.npy", _npy(np.zeros((4, 8, 8, 1), np.float32))[:-100], "not a readable .npy"),
])
def test_hostile_inputs_are_one_line_exit_2(predict, bundles, capsys, tmp_path, name, content,
                                            needle):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run(predict, bundles["none"], capsys, path)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: ") and needle in lines[0], lines


def test_a_decompression_bomb_is_refused(predict, bundles, capsys, tmp_path):
    """A 5000x4000 PNG (20 MB of pixels, 20 kB of file) is over the 16-megapixel limit."""
    from PIL import Image

    path = tmp_path / "bomb.png"
    Image.new("L", (5000, 4000)).save(path)
    assert path.stat().st_size < 100_000
    code, _, err = run(predict, bundles["none"], capsys, path)
    assert code == 2 and "refused as a decompression bomb" in err
    assert len(err.strip().splitlines()) == 1


def test_integer_and_float64_npy_are_accepted(predict, bundles, capsys, tmp_path):
    x = np.load(bundles["none"] / "golden" / "inputs.npy")
    np.save(tmp_path / "f64.npy", x[:2].astype(np.float64))
    np.save(tmp_path / "u8.npy", (x[0] * 0).astype(np.uint8))
    code, out, err = run(predict, bundles["none"], capsys, tmp_path / "f64.npy",
                         tmp_path / "u8.npy")
    assert code == 0, err
    assert [p["input"].rsplit("/", 1)[-1] for p in json.loads(out)["predictions"]] == [
        "f64.npy[0]", "f64.npy[1]", "u8.npy[0]"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        i = rng.randrange(len(data)) if data else 0
        if op < 0.5 and data:
            data[i] = rng.randrange(256)
        elif op < 0.7:
            data = data[: rng.randrange(len(data) + 1)]
        elif op < 0.85:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif data:
            del data[i: i + rng.randint(1, 16)]
    return bytes(data)


_DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int64", "bool", "complex64",
           "U3", "S2", "datetime64[s]", "V4"]


def _random_npy(rng: random.Random) -> bytes:
    shape = rng.choice([(8, 8, 1), (1, 8, 8, 1), (2, 8, 8, 1), (8, 8), (8, 8, 3), (0,), (),
                        (rng.randint(0, 3), rng.randint(1, 9), rng.randint(1, 9),
                         rng.randint(1, 3))])
    dtype = np.dtype(rng.choice(_DTYPES))
    np_rng = np.random.default_rng(rng.randrange(1 << 30))
    arr = np.zeros(shape, dtype)
    if dtype.kind in "fiu":
        with np.errstate(all="ignore"):  # overflowing casts are part of the fuzz
            arr = (np_rng.normal(size=shape) * 10 ** rng.randint(0, 40)).astype(dtype)
        if dtype.kind == "f" and arr.size and rng.random() < 0.3:
            arr.flat[0] = rng.choice([np.nan, np.inf, -np.inf])
    return _npy(arr)


def _case(rng: random.Random, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    kind = rng.choice(["png", "jpg", "npy", "npy-random", "garbage"])
    if kind == "npy-random":
        return ".npy", _random_npy(rng) if rng.random() < 0.7 else _mutate(rng, _random_npy(rng))
    if kind == "garbage":
        return rng.choice([".png", ".npy", ".jpg"]), rng.randbytes(rng.randint(0, 300))
    return f".{kind}", _mutate(rng, rng.choice(seeds[kind]))


def test_fuzz_predict_inputs_end_in_a_result_or_exit_2(predict, bundles, capsys, tmp_path):
    rng = random.Random(14)
    x = np.load(bundles["none"] / "golden" / "inputs.npy")
    seeds = {"png": [_png(), _png((16, 12), "RGB"), _png((8, 8), "L", "GIF")],
             "jpg": [_png((8, 8), "L", "JPEG"), _png((24, 24), "RGB", "JPEG")],
             "npy": [_npy(x[:2]), _npy(x[0]), _npy(x[:1].astype(np.float64))]}
    codes = {0: 0, 2: 0}
    for i in range(FUZZ_CASES):
        ext, content = _case(rng, seeds)
        path = tmp_path / f"case{i}{ext}"
        path.write_bytes(content)
        code = predict.main([str(path), "--json"], root=str(bundles["none"]))
        got = capsys.readouterr()
        assert code in codes, (i, ext, code, got.err)
        assert "Traceback" not in got.err
        if code == 2:
            assert got.err.count("\n") == 1 and got.err.startswith("Error: "), (i, got.err)
        else:
            assert len(json.loads(got.out)["predictions"]) >= 1
        codes[code] += 1
        path.unlink()
    assert codes[0] > 20 and codes[2] > 100, codes  # both outcomes were exercised
