"""``pip install .`` ships every module, the demos and the built dashboard (no Node needed)."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_contains_every_module_the_bundle_and_the_demos(tmp_path):
    source = tmp_path / "source"  # a copy, so no stale build/ folder can fill in what setup.py misses
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", "runs", "test-artifacts", ".hypothesis"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    expected = set()
    for source, installed in (("tensorboard_plugin_aevis", "tensorboard_plugin_aevis"), ("summary_writers", "summary_writers"),
                              ("demo", "tensorboard_plugin_aevis/demos")):
        for folder, dirs, files in os.walk(os.path.join(REPO, source)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            relative = os.path.relpath(folder, os.path.join(REPO, source))
            for f in files:
                if f.endswith(".py"):
                    expected.add(os.path.normpath(os.path.join(installed, relative, f)))
    expected |= {"tensorboard_plugin_aevis/static/index.js", "tensorboard_plugin_aevis/http_api.md"}
    assert not expected - names, sorted(expected - names)
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(tmp_path / wheel).read(entry_points[0]).decode()
    assert "[tensorboard_plugins]" in text and "aevis = tensorboard_plugin_aevis.aevis_plugin:AEVisPlugin" in text
