"""One scoring function for evaluation, the MLflow model and the demo.

A ``Ranker`` turns video features into query vectors q and music features into track
vectors p; the score of a (video, track) pair is q · p (§6). Precompute P for the
catalog once, then rank any number of clips against it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
BATCH = 4096


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Ranker:
    """Score = video_vectors(x_v) · music_vectors(x_m)ᵀ, batched, numpy in and out."""

    name: str
    video_fn: Callable[[torch.Tensor], torch.Tensor]
    music_fn: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(x), BATCH):
                xb = torch.as_tensor(np.array(x[s:s + BATCH], dtype=np.float32), device=self.device)  # copy: x may be a read-only memory map
                out.append(fn(xb).float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 1), np.float32)

    def video_vectors(self, x_v: np.ndarray) -> np.ndarray:
        return self._apply(self.video_fn, x_v)

    def music_vectors(self, x_m: np.ndarray) -> np.ndarray:
        return self._apply(self.music_fn, x_m)

    def scores(self, x_v: np.ndarray, x_m: np.ndarray) -> np.ndarray:
        """(N, M) scores of N videos against M tracks."""
        return self.video_vectors(x_v) @ self.music_vectors(x_m).T

    def rank(self, q: np.ndarray, catalog: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k track ids and scores for query vectors q (N, D) against catalog vectors (M, D)."""
        from deccm.metrics import top_k

        s = np.atleast_2d(q) @ catalog.T
        ids = top_k(s, min(k, catalog.shape[0]))
        return ids, np.take_along_axis(s, ids, axis=1)


def popularity_ranker(train_music: np.ndarray, n_tracks: int, seed: int = 0) -> Ranker:
    """The popularity baseline: every video gets the tracks most often picked in training.

    Score = log(1 + count), with a tiny fixed jitter so equal counts tie-break at random
    instead of being ranked pessimistically as a block.
    """
    counts = np.bincount(train_music, minlength=n_tracks).astype(np.float64)
    jitter = np.random.default_rng(seed).random(n_tracks) * 1e-6
    pop = torch.as_tensor(np.log1p(counts) + jitter, dtype=torch.float64).reshape(-1, 1)

    def video_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 1, dtype=torch.float64)

    def music_fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != n_tracks:
            raise ValueError(f"the popularity ranker scores the whole catalog ({n_tracks} tracks), got {x.shape[0]}")
        return pop

    return Ranker("popularity", video_fn, music_fn, info={"kind": "popularity", "trained": "training counts"})


def load_ranker(path: str | Path, device: str = "auto") -> Ranker:
    """A ranker from a run directory (or its ``best.pt``/``last.pt``) written by ``deccm.train``."""
    from deccm.train import load_model

    path = Path(path)
    dev = resolve_device(device)
    model, config = load_model(path, device=dev)
    run = path if path.is_dir() else path.parent
    name = config.get("name", run.name)
    return Ranker(name, model.video_embed, model.music_embed, dev, info=config)

