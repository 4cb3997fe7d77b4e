"""One logging set-up for every CLI, so messages look the same everywhere."""
from __future__ import annotations

import logging
import os


def setup(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 0 else getattr(logging, os.environ.get("DECCM_LOG", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
