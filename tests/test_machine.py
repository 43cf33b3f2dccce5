"""What machine the numbers came from (edgebn.machine): CPU, versions, cache, memory."""

from pathlib import Path

from edgebn.machine import cache_dir, cpu_model, environment, peak_rss_mb, version


def test_the_cache_directory_is_edgebn_cache_or_the_users_own(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGEBN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "edgebn"


def test_versions_are_read_without_importing_and_none_when_absent():
    assert version("numpy") and version("no-such-distribution-edgebn") is None


def test_the_environment_says_the_cpu_and_the_runtime_when_given():
    env = environment("ai_edge_litert 2.3.0", True, 2)
    assert env["cpu"] == cpu_model() and env["cores"] >= 1 and env["numpy"]
    assert (env["backend"], env["xnnpack"], env["threads"]) == ("ai_edge_litert 2.3.0", True, 2)
    assert "backend" not in environment()
    assert Path("/proc/self/status").exists() and peak_rss_mb() > 10  # this Python, NumPy
