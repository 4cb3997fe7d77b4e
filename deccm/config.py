"""The project state dir and the environment variables that move it.

Every path deccm writes by default lives under ``DECCM_HOME`` (default ``./.deccm``,
relative to the current directory), never in the source tree and never at an absolute
path baked into the code.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "DECCM_HOME"


def home() -> Path:
    """The state dir: ``$DECCM_HOME`` or ``./.deccm``; created on first use."""
    path = Path(os.environ.get(ENV_HOME, ".deccm")).expanduser()
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
