"""Advisory file locks on shared state: one per run dir, one for the pipeline state (``$DECCM_HOME/pipeline``).

A DAG run, ``make pipeline`` and the demo's ``--ensure`` may start at the same time on one
state dir (docs/architecture.md, "Locks"). Each writer takes the lock of what it writes;
a second writer waits up to a timeout, then fails with who holds it and since when. The
lock is ``fcntl.flock`` on a lock file, so the kernel releases it when the holder dies
(even by ``kill -9``): a stale lock file never blocks anyone. The holder's pid and start
time are written into the file only to say who holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from deccm import config

log = logging.getLogger(__name__)

ENV_TIMEOUT = "DECCM_LOCK_TIMEOUT"  # seconds a second writer waits before failing
DEFAULT_TIMEOUT = 600.0
LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # lock files this process holds, with their depth (a lock is re-entrant per process)


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it and the fix."""


def default_timeout() -> float:
    """``$DECCM_LOCK_TIMEOUT`` seconds, else 10 minutes (a training stage can take that long to finish)."""
    raw = os.environ.get(ENV_TIMEOUT)
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds") from None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (unknown pid)"
    return f"pid {info.get('pid', '?')} since {info.get('since', '?')}"


@contextlib.contextmanager
def hold(path: str | os.PathLike, timeout: float | None = None, what: str | None = None) -> Iterator[Path]:
    """Hold the lock file ``path``, waiting up to ``timeout`` s (None: :func:`default_timeout`; 0: no wait).

    Re-entrant within a process (``ensure_champion`` holds the pipeline lock and calls
    ``run_all``, which takes it too); another process waits or gets :class:`LockHeld`.
    """
    path = Path(path).resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = default_timeout() if timeout is None else float(timeout)
    what = what or str(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockHeld(f"{what} is locked: held by {_holder(path)} (lock file {path}). Fix: wait for that "
                                   f"process to finish (or stop it), or raise {ENV_TIMEOUT} (now {wait:g} s).") from None
                if not announced:
                    log.info("%s is locked by %s: waiting up to %g s", what, _holder(path), wait)
                    announced = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pipeline_lock(timeout: float | None = None) -> contextlib.AbstractContextManager[Path]:
    """The lock on the pipeline state (``$DECCM_HOME/pipeline``: shards, merged stores, the registry's stages)."""
    return hold(config.state_path("pipeline", LOCK_NAME), timeout, what=f"the pipeline state {config.home() / 'pipeline'}")


def run_lock(run_dir: str | os.PathLike, timeout: float | None = None) -> contextlib.AbstractContextManager[Path]:
    """The lock on one run dir: a sibling file ``.NAME.lock``, because training swaps the dir itself by renames."""
    run_dir = Path(run_dir).resolve()
    return hold(run_dir.with_name(f".{run_dir.name}{LOCK_NAME}"), timeout, what=f"the run dir {run_dir}")
