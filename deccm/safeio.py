"""Atomic writes and safe loads shared by every stage.

A crash mid-write must never leave a half-written file where a good one was, so every
output goes to a temporary sibling first and is moved into place with ``os.replace``.
Loads never unpickle: ``np.load(..., allow_pickle=False)`` only.

An output gets the mode a plain ``open`` would give it (0666 / 0777 less the umask), not
``tempfile``'s private 0600 / 0700, so another service reading the state dir can read it.
Temp siblings carry their writer's PID (``.NAME.<pid>.….tmp``, ``.NAME.old-<pid>``); what a
killed writer left is swept by the next write of the same output once that PID is gone and
the leftover is older than :data:`STALE_S`.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

STALE_S = 6 * 3600.0  # a leftover this old whose writer is gone is swept (a live writer on another host keeps its PID's
#                       files fresh: temp files are written to as they grow)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask can only be read by setting it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(dest: str | os.PathLike, max_age_s: float = STALE_S) -> list[Path]:
    """Remove the temp siblings of ``dest`` that a killed writer left (its PID gone, older than ``max_age_s``)."""
    dest = Path(dest)
    gone = []
    if not dest.parent.is_dir():
        return gone
    now = time.time()
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*"):
        m = _LEFTOVER.fullmatch(p.name[len(dest.name) + 2:])
        if m is None:
            continue
        try:
            if now - p.lstat().st_mtime < max_age_s or _alive(int(m.group("pid") or m.group("old"))):
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            gone.append(p)
        except (OSError, ValueError):
            continue  # another writer swept it first, or it is not ours to remove
    return gone


_LEFTOVER = re.compile(r"(?P<pid>\d+)\..*\.tmp|old-(?P<old>\d+)")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; on success move it onto ``dest`` (mode 0666 less the umask), else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(dest: str | os.PathLike, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy(dest: str | os.PathLike, array: np.ndarray) -> None:
    """Write one array as ``.npy`` atomically (never as a pickled object array)."""
    array = np.asarray(array)
    if array.dtype == object:
        raise TypeError(f"{dest}: refusing to save an object array (it would need pickle)")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def save_npz(dest: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write named arrays as one uncompressed ``.npz`` atomically (never a pickled object array)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if any(a.dtype == object for a in arrays.values()):
        raise TypeError(f"{dest}: refusing to save an object array (it would need pickle)")
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read into memory without ever unpickling."""
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling; ``mmap`` maps large arrays lazily."""
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the complete directory ``src`` at ``dest`` with two renames: the old ``dest`` aside (``.NAME.old-PID``), then
    ``src`` in; the old one is removed last. A crash between the renames is undone by :func:`recover_dir`."""
    src, dest = Path(src), Path(dest)
    if not dest.exists():
        os.replace(src, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: str | os.PathLike) -> Path | None:
    """Put back the copy a writer killed inside :func:`replace_dir` left aside (``dest`` missing, ``.NAME.old-PID`` of a
    dead PID beside it); the restored path, or None when there was nothing to undo."""
    dest = Path(dest)
    if dest.exists() or not dest.parent.is_dir():
        return None
    olds = [p for p in dest.parent.glob(f".{glob.escape(dest.name)}.old-*")
            if p.name[len(dest.name) + 6:].isdigit() and not _alive(int(p.name[len(dest.name) + 6:]))]
    if not olds:
        return None
    old = max(olds, key=lambda p: p.lstat().st_mtime)
    os.replace(old, dest)
    log.warning("restored %s: a writer was killed while replacing it", dest)
    return dest


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling and swap it in only when complete.

    With ``overwrite`` an existing ``dest`` is replaced only after the new one is
    fully written; without it an existing ``dest`` is an error before any work starts.
    """
    dest = Path(dest)
    recover_dir(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; pass --overwrite to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        replace_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
