"""The project state dir, the environment variables that move it, and the device choice.

Every path deccm writes by default lives under ``DECCM_HOME`` (default ``./.deccm``),
never in the source tree and never at an absolute path baked into the code. The state dir
is resolved to an absolute path the first time it is asked for (per value of the
variable), so a later ``chdir`` never moves it and every path derived from it is absolute.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENV_HOME = "DECCM_HOME"
_resolved: dict[str, Path] = {}


def home() -> Path:
    """The absolute state dir: ``$DECCM_HOME`` or ``./.deccm``; created on first use."""
    raw = os.environ.get(ENV_HOME, ".deccm")
    path = _resolved.get(raw)
    if path is None:
        path = _resolved[raw] = Path(raw).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_path(*parts: str) -> Path:
    """A path under the state dir (``data/<name>``, ``runs/<id>`` ...); parents are created."""
    path = home().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(name: str) -> Path:
    """Default location of the dataset called ``name``."""
    return state_path("data", name)


def runs_dir() -> Path:
    """Where training runs go by default: ``$DECCM_HOME/runs``."""
    return state_path("runs", "x").parent


def resolve_device(device: str = "auto") -> "torch.device":
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    import torch  # here, so modules that only need paths do not pay for torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device auto or cpu")
    return dev
