"""Atomic outputs: readable modes, nothing half-written, and what a killed writer left is swept (deccm.safeio)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deccm import safeio


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_outputs_get_the_mode_a_plain_open_gives_not_tempfiles_private_one(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        safeio.write_json(tmp_path / "a.json", {"x": 1})
        safeio.save_npy(tmp_path / "a.npy", np.arange(3))
        with safeio.atomic_dir(tmp_path / "store") as tmp:
            (tmp / "f.txt").write_text("y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644 and _mode(tmp_path / "a.npy") == 0o644
    assert _mode(tmp_path / "store") == 0o755  # a reader in another service can list and read it


def test_a_failed_write_leaves_the_previous_output_and_no_temp_file(tmp_path: Path) -> None:
    safeio.write_text(tmp_path / "out.txt", "good\n")
    with pytest.raises(RuntimeError):
        with safeio.atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "out.txt").read_text() == "good\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_leftovers_of_a_killed_writer_are_swept_and_a_live_writers_are_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a PID that just ended
    stale = [tmp_path / f".out.txt.{dead}.x1.tmp", tmp_path / f".store.{dead}.y2.tmp", tmp_path / f".store.old-{dead}"]
    stale[0].write_text("half")
    for d in stale[1:]:
        d.mkdir()
        (d / "part").write_text("half")
    live = tmp_path / f".out.txt.{os.getpid()}.z3.tmp"  # this process: a writer still at work
    fresh = tmp_path / f".store.{dead}.w4.tmp"  # its writer is gone, but only just: left for now
    live.write_text("busy")
    fresh.mkdir()
    then = time.time() - safeio.STALE_S - 60
    for p in [*stale, live]:
        os.utime(p, (then, then))
    safeio.write_text(tmp_path / "out.txt", "new\n")
    with safeio.atomic_dir(tmp_path / "store", overwrite=True) as tmp:
        (tmp / "f").write_text("y")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, fresh.name, "out.txt", "store"]), left
    assert (tmp_path / "out.txt").read_text() == "new\n" and (tmp_path / "store" / "f").read_text() == "y"


def test_a_writer_killed_between_the_two_renames_of_a_swap_loses_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "store"
    with safeio.atomic_dir(dest) as tmp:
        (tmp / "f").write_text("old")
    child = ("import os, signal, sys\nfrom pathlib import Path\nfrom deccm import safeio\nreal = os.replace\n"
             "def replace(a, b):\n    real(a, b)\n    if '.old-' in str(b):\n        os.kill(os.getpid(), signal.SIGKILL)\n"
             "os.replace = replace\nwith safeio.atomic_dir(sys.argv[1], overwrite=True) as tmp:\n"
             "    (tmp / 'f').write_text('new')\n")
    r = subprocess.run([sys.executable, "-c", child, str(dest)], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert not dest.exists() and len(list(tmp_path.glob(".store.old-*"))) == 1  # killed with the old result set aside
    with pytest.raises(FileExistsError):  # the next writer puts it back first, so it is never silently lost
        with safeio.atomic_dir(dest):
            pass
    assert (dest / "f").read_text() == "old" and not list(tmp_path.glob(".store.old-*"))  # (its half-done new one is swept later)
    assert safeio.recover_dir(dest) is None  # nothing left to undo
