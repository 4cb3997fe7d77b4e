"""Shared fixtures: a private state dir per test session and small real datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every default path in the suite lands in a temp DECCM_HOME, never in the checkout."""
    home = tmp_path_factory.mktemp("deccm_home")
    os.environ["DECCM_HOME"] = str(home)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(home / "numba"))
    return home


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` synthetic preset (seed 0), generated once per session; treat as read-only."""
    from deccm.data.synth import synth

    return synth(tmp_path_factory.mktemp("data") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real-media demo corpus (seed 0), built once per session through the CLI; treat as read-only."""
    import subprocess
    import sys

    dst = tmp_path_factory.mktemp("corpus") / "demo"
    proc = subprocess.run([sys.executable, "-m", "deccm.cli", "data", "demo-corpus", str(dst), "--size", "tiny", "--seed", "0"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote demo corpus (tiny, seed 0) to {dst}" in proc.stdout
    return dst


@pytest.fixture(scope="session")
def recorded_tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recorded-music corpus (seed 0, 5 s excerpts of Debian soundtrack packages), built once through the CLI."""
    import subprocess
    import sys

    dst = tmp_path_factory.mktemp("corpus") / "recorded"
    proc = subprocess.run([sys.executable, "-m", "deccm.cli", "data", "demo-corpus", str(dst), "--size", "recorded-tiny",
                           "--seed", "0"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote demo corpus (recorded-tiny, seed 0) to {dst}" in proc.stdout
    return dst
