"""The planted relation between what a track sounds like and what a clip looks like.

Music property vector ``q(m)`` of a track, each coordinate in [-1, 1], from the properties
measured on the rendered track (``deccm.data.corpus.music``):

* ``tempo``   = clip(log2(tempo_bpm / 90) / 0.8): 52 BPM → -1, 90 → 0, 157 → +1;
* ``mode``    = +1 major, -1 minor (music21 key analysis of the excerpt);
* ``energy``  = ½·clip(log2(onsets_per_s / 3) / 1.5) + ½·clip((rms_db + 25) / 7):
  note density and loudness, equally weighted;
* ``texture`` = clip((voices - 2.5) / 1.5): one voice → -1, four or more → +1.

Visual property vector ``v`` of a clip, each in [-1, 1]: ``(brightness, warmth, motion,
cut_rate, texture)``; ``deccm.data.corpus.video`` draws a clip from it.

The fixed map ``φ(m) = MAP · q(m)`` says which look fits which sound (rows: visual, columns:
music; each row's absolute weights sum to 1, so φ stays in [-1, 1]): major → bright and
warm, fast → fast motion, energetic → frequent cuts (and a little brightness), many voices
→ fine texture. The **true affinity** of clip ``v`` and track ``m`` is

    a(v, m) = -‖v - φ(m)‖² / 5 · SCALE,   SCALE = 10

(0 = perfect fit; a unit-variance-like spread over a catalog, like the synthetic benchmark).
Everything needed to recompute it is stored in the dataset: ``videos.csv`` holds each
clip's visual vector, ``dataset.json`` → ``corpus.tracks`` each track's measured properties
and music vector, and ``corpus.relation`` this map (see :func:`from_manifest`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

MUSIC_PROPERTIES = ("tempo", "mode", "energy", "texture")
VISUAL_PROPERTIES = ("brightness", "warmth", "motion", "cut_rate", "texture")
MAP = np.array([
    # tempo mode energy texture
    [0.0, 0.6, 0.4, 0.0],  # brightness
    [0.2, 0.8, 0.0, 0.0],  # warmth
    [0.8, 0.0, 0.2, 0.0],  # motion
    [0.3, 0.0, 0.7, 0.0],  # cut_rate
    [0.0, 0.0, 0.2, 0.8],  # texture
], dtype=np.float64)
SCALE = 10.0

# The recorded catalog (``deccm.data.corpus.recorded``) measures brightness instead of voices:
# major → bright and warm, fast → motion, energetic → cuts, bright timbre → bright, fine texture.
RECORDED_PROPERTIES = ("tempo", "mode", "energy", "brightness")
RECORDED_MAP = np.array([
    # tempo mode energy brightness
    [0.0, 0.5, 0.0, 0.5],  # brightness
    [0.2, 0.8, 0.0, 0.0],  # warmth
    [0.8, 0.0, 0.2, 0.0],  # motion
    [0.3, 0.0, 0.7, 0.0],  # cut_rate
    [0.0, 0.0, 0.2, 0.8],  # texture
], dtype=np.float64)


def music_vector(tempo_bpm: np.ndarray, mode: np.ndarray, onsets_per_s: np.ndarray, rms_db: np.ndarray,
                 voices: np.ndarray) -> np.ndarray:
    """(M, 4) music property vectors from measured properties (``mode``: strings 'major'/'minor')."""
    tempo = np.clip(np.log2(np.asarray(tempo_bpm, dtype=np.float64) / 90.0) / 0.8, -1, 1)
    major = np.where(np.asarray(mode) == "major", 1.0, -1.0)
    density = np.clip(np.log2(np.maximum(np.asarray(onsets_per_s, dtype=np.float64), 1e-3) / 3.0) / 1.5, -1, 1)
    loud = np.clip((np.asarray(rms_db, dtype=np.float64) + 25.0) / 7.0, -1, 1)
    texture = np.clip((np.asarray(voices, dtype=np.float64) - 2.5) / 1.5, -1, 1)
    return np.stack([tempo, major, 0.5 * density + 0.5 * loud, texture], axis=1)


def mapped(q: np.ndarray, map_: np.ndarray = MAP) -> np.ndarray:
    """(M, 5) the visual vector that fits each track best: φ(m) = MAP · q(m)."""
    return np.asarray(q, dtype=np.float64) @ np.asarray(map_, dtype=np.float64).T


def affinity(v: np.ndarray, q: np.ndarray, map_: np.ndarray = MAP) -> np.ndarray:
    """(N, M) true affinity of clips with visual vectors ``v`` (N, 5) to tracks with music vectors ``q`` (M, 4)."""
    phi = mapped(q, map_)
    v = np.asarray(v, dtype=np.float64)
    d2 = (v ** 2).sum(1)[:, None] - 2 * v @ phi.T + (phi ** 2).sum(1)[None, :]
    return -SCALE * np.maximum(d2, 0.0) / len(VISUAL_PROPERTIES)


def describe(recorded: bool = False) -> dict[str, Any]:
    """The relation as stored in the manifest, enough to recompute the affinity (``map_of`` reads it back)."""
    if recorded:
        return {"music_properties": list(RECORDED_PROPERTIES), "visual_properties": list(VISUAL_PROPERTIES),
                "map": RECORDED_MAP.tolist(), "scale": SCALE,
                "affinity": "a(v, m) = -scale * ||v - map @ q(m)||^2 / 5",
                "music_vector": {"tempo": "catalog percentile of tempo_bpm, in [-1, 1]",
                                 "mode": "catalog percentile of mode_strength (major r - minor r), in [-1, 1]",
                                 "energy": "mean of the catalog percentiles of onsets_per_s and rms_db",
                                 "brightness": "catalog percentile of centroid_hz, in [-1, 1]"}}
    return {"music_properties": list(MUSIC_PROPERTIES), "visual_properties": list(VISUAL_PROPERTIES),
            "map": MAP.tolist(), "scale": SCALE,
            "affinity": "a(v, m) = -scale * ||v - map @ q(m)||^2 / 5",
            "music_vector": {"tempo": "clip(log2(tempo_bpm / 90) / 0.8, -1, 1)", "mode": "+1 major, -1 minor",
                             "energy": "0.5*clip(log2(onsets_per_s / 3) / 1.5, -1, 1) + 0.5*clip((rms_db + 25) / 7, -1, 1)",
                             "texture": "clip((voices - 2.5) / 1.5, -1, 1)"}}


def map_of(manifest: dict[str, Any]) -> np.ndarray:
    """The (5, 4) map a demo-corpus dataset was drawn with (the scores' or the recorded catalog's)."""
    return np.asarray(manifest["corpus"]["relation"]["map"], dtype=np.float64)


def from_manifest(manifest: dict[str, Any], videos: list[dict[str, str]], kind: str = "ugc") -> tuple[np.ndarray, np.ndarray]:
    """(visual vectors of the ``kind`` clips in id order, music vectors of the tracks) from a demo-corpus dataset."""
    rows = sorted((r for r in videos if r["kind"] == kind), key=lambda r: int(r["id"]))
    v = np.array([[float(r[p]) for p in VISUAL_PROPERTIES] for r in rows], dtype=np.float64)
    q = np.asarray(manifest["corpus"]["tracks"]["music_vector"], dtype=np.float64)
    return v, q
