import pytest

from edgebn.errors import InvalidModelError, RuntimeBackendError
from edgebn.runtime import backends as runtime
from edgebn.runtime.backends import Backend, load_interpreter, resolve_backend


def test_auto_prefers_litert():
    assert resolve_backend("auto") is Backend.ai_edge_litert


@pytest.mark.parametrize("backend", [Backend.ai_edge_litert, Backend.tensorflow])
def test_each_installed_backend_loads_and_names_itself(cnn, backend):
    interp, info = load_interpreter(cnn["tflite"], backend, threads=2)
    assert info.threads == 2 and info.version != "unknown"
    names = {"ai-edge-litert": "ai_edge_litert", "tensorflow": "tensorflow"}
    assert info.name == names[backend.value]
    interp.invoke()


def test_tflite_runtime_214_under_numpy2_is_refused_in_one_line(monkeypatch, cnn):
    # The check reads the installed version; stand in for tflite-runtime 2.14's metadata.
    monkeypatch.setattr(runtime, "backend_version", lambda backend: "2.14.0")
    monkeypatch.setattr(runtime.np, "__version__", "2.4.6")
    with pytest.raises(RuntimeBackendError, match=r"built for NumPy 1\.x.*NumPy 2\.4\.6"):
        load_interpreter(cnn["tflite"], Backend.tflite_runtime)


def test_bad_model_never_reaches_the_interpreter(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 64)
    with pytest.raises(InvalidModelError):
        load_interpreter(bad)


def test_no_xnnpack_is_reported(cnn):
    _, info = load_interpreter(cnn["tflite"], xnnpack=False)
    assert info.xnnpack is False
