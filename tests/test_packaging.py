"""The wheel `pip install .` builds: what it holds, and where setuptools builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_device_side_and_builds_outside_build(tmp_path):
    """The device scripts and the Ansible collection travel in the wheel; setuptools builds in
    its own folder, never in build/ (the folder `edgebn build` writes by default)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheel"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                           "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (src / "build").exists()
    assert (src / ".setuptools-build").is_dir()
    (wheel,) = wheels.glob("edgebn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    device = {f"edgebn/deploy/device/{p.name}" for p in (ROOT / "edgebn/deploy/device").iterdir()
              if p.is_file() and p.suffix in (".py", ".sh")}
    assert device and device <= names
    assert any(n.startswith("edgebn/deploy/ansible_collections/edgebn/fleet/") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "tools/"))]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()
