"""Weights files: loaded as plain tensor state dicts and identified by their sha256.

Loading never unpickles arbitrary objects (``torch.load(..., weights_only=True)``), and a
spec names every file by content hash, so features made with different weights never mix.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from deccm import safeio


class WeightsError(ValueError):
    """Weights are missing, unreadable or do not fit the network."""


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return safeio.sha256_file(path)


def weights_info(path: Path, source: str) -> dict[str, str]:
    """The spec entry for a weights file: its name, where it came from and its sha256 (hashed once per process)."""
    st = path.stat()
    return {"file": path.name, "source": source, "sha256": _sha256(str(path), st.st_size, st.st_mtime_ns)}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from ``path`` (a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        sd = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several types for foreign or corrupt files
        raise WeightsError(f"{path}: cannot load as a weights-only state dict ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(sd).__name__}")
    return dict(sd)
