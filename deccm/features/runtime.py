"""Where extraction runs: thread counts and librosa's JIT cache (the device: ``deccm.config.resolve_device``).

Kept in one place so every extractor (and every worker process) makes the same choices.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

from deccm import config


def set_threads(n: int) -> None:
    """Torch CPU threads for this process (intra-op)."""
    if n < 1:
        raise ValueError("threads must be >= 1")
    torch.set_num_threads(n)


def single_thread() -> None:
    """One torch thread per worker process, so N workers do not oversubscribe the cores."""
    set_threads(1)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads and restore the caller's count afterwards.

    In-process extraction uses one thread by default: torch's OpenMP threads spin while
    they wait, so two of them beside another busy process burned up to 2.8x the CPU
    (docs/benchmarks.md, "Extraction on a busy machine").
    """
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def jit_cache_lock() -> Iterator[None]:
    """Hold an exclusive lock on numba's JIT cache: warm a process's kernels under it.

    Processes compiling the same kernels into a cold cache at once race on its files (a
    worker that loads a half-written entry dies with a segfault); under the lock the first
    compiles and writes, the others wait and then only read.
    """
    librosa()  # sets NUMBA_CACHE_DIR, imports librosa under the lock
    with _cache_lock():
        yield


def librosa() -> ModuleType:
    """Import librosa with numba's JIT cache in the state dir (site-packages may be read-only).

    The first feature call compiles with numba (10–20 s cold); the cache makes later
    processes start fast. Some kernels are compiled (or read from the cache) when their
    module is *imported*: ``librosa.util.utils`` declares ``__peak_pick`` with explicit
    signatures and ``cache=True``. The first import in a process therefore happens under
    the JIT-cache lock too: two pool workers importing it into a cold cache at once wrote the
    same entry, and a later process that read it crashed in ``onset_detect`` (a segfault in
    the clean-clone CI).
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(config.state_path("cache", "numba")))
    if not _IMPORTED:
        with _cache_lock():
            import librosa.beat  # noqa: F401  - kernels compiled (or read from the cache) at import
            import librosa.onset  # noqa: F401
            import librosa.util.utils  # noqa: F401
        _IMPORTED.append(True)
    import librosa as _librosa

    return _librosa


_IMPORTED: list[bool] = []  # this process imported librosa under the lock


@contextmanager
def _cache_lock() -> Iterator[None]:
    cache = Path(os.environ["NUMBA_CACHE_DIR"])
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".compile.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
