"""Moments: which part of a track to play under a clip, cut on the beat to the clip's exact length.

docs/method.md §11 says why each rule is what it is. The parts, in the order a request uses them:

* :func:`analyse` (once per track, cached by content under :attr:`WindowSpec.analysis_id`): the
  track decoded mono at 22.05 kHz through the media rule; librosa's beat tracker gives the
  beats; per :attr:`WindowSpec.block_s` block the frames' power, onset strength, onset
  count, power-weighted spectral centroid and chroma are summed, so a window of any length
  is described from block sums in microseconds.
* :func:`descriptors`: per window (the clip's length, starting on every beat, or every
  :attr:`WindowSpec.hop_s` on a track without one: :func:`candidate_starts`)
  the five descriptors the catalogs are measured by: tempo (median beat interval inside,
  else the track's), mode (best major − best minor key correlation of the window's chroma),
  onsets per second, loudness (dB) and brightness (centroid); and a sixth, the mean onset
  strength (how hard the music moves).
* :class:`Projection`: a ridge map, fitted on the catalog, from a track's standardised
  descriptors and their pairwise products to the model's vector for it (which descriptors,
  degree and ridge by leave-one-track-out R²). It turns a window into the vector the model
  would give that part of the track, so each window gets a score against the clip's query.
  The ranking itself stays the model's track score (``benchmarks/moments.py`` measures the
  best-window rule against it).
* :func:`choose`: the moment's window is the one whose *neighbourhood* scores best: the mean
  score of the windows that would count as the same moment (IoU ≥ 0.5, starts within a third
  of the length), so one window the projection happens to overrate does not win.
* :func:`place`: the chosen window's start moves to a downbeat within one beat of it (else
  stays on its beat); a track shorter than the clip loops a whole number of beats (bars
  where downbeats were found).
* :func:`render`: the moment's samples at exactly the clip's length: a 10 ms fade-in, the
  loop seams crossfaded with equal power, a short fade-out at the clip's end.

Serving only: nothing here imports training code.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deccm import safeio
from deccm.features.runtime import jit_cache_lock, librosa

log = logging.getLogger(__name__)

ANALYSIS_VERSION = 2
HOP = 512  # STFT hop (23 ms at 22.05 kHz): the beat tracker's and the block sums' frame
N_FFT = 2048
BLOCK_COLUMNS = ("frames", "power", "onset_strength", "onsets", "centroid_power", *(f"chroma_{i}" for i in range(12)))
DESCRIPTORS = ("log2_tempo", "mode", "log_onset_rate", "loudness_db", "log_centroid", "log_onset_strength")
DESCRIPTOR_SETS = (5, 6)  # the projection reads the first k descriptors, k one of these (§11.3; 5: bundles before the sixth)
CHOICES = ("neighbourhood", "argmax")  # how the moment's window is chosen from the window scores (§11.4)
MIN_BEATS = 4  # fewer detected beats: the track has no beat (cuts fall on the window grid)
BEAT_SALIENCE = 1.3  # and the beats' mean onset strength must exceed the track's by 30 % ...
MIN_BEAT_STRENGTH = 0.25  # ... and this floor (dB-mel flux; a steady tone's ripples reach about 0.05, music's beats 1+)
DEGREES = (1, 2)  # the projection's polynomial degrees (WindowSpec.max_degree picks up to which)
DOWNBEAT_MARGIN = 1.1  # a beat phase counts as the downbeat when its onset strength beats the others' mean by 10 %


class MomentError(ValueError):
    """A track or a request that cannot give a moment; the message names the track and the fix."""


@dataclass(frozen=True)
class WindowSpec:
    """How tracks are analysed, windows laid and cuts made; stored with every bundle and registered model."""

    hop_s: float = 1.0  # window starts every hop_s seconds (the bound: ≤ 2 s)
    block_s: float = 0.5  # the analysis's time resolution
    sample_rate: int = 22_050  # analysis
    render_rate: int = 44_100  # what is played and muxed
    fade_in_s: float = 0.01  # no click at the cut
    fade_out_s: float = 0.3  # the end falls at the clip's end, faded
    crossfade_s: float = 0.08  # each loop seam
    snap: str = "downbeat"  # "downbeat" (else beat), "beat", or "none"
    max_track_s: float = 900.0  # a track is analysed on its first 15 minutes
    max_degree: int = 2  # the projection tries polynomial degrees 1 … max_degree of the descriptors (§11.3)
    choice: str = "neighbourhood"  # :data:`CHOICES`: the best neighbourhood of windows, or the best window (§11.4)

    def __post_init__(self) -> None:
        if not 0 < self.hop_s <= 2.0:
            raise ValueError(f"window hop must be in (0, 2] seconds, got {self.hop_s}")
        if not 0 < self.block_s <= self.hop_s:
            raise ValueError(f"block must be in (0, hop] seconds, got {self.block_s}")
        if self.snap not in ("downbeat", "beat", "none"):
            raise ValueError(f"snap must be downbeat, beat or none, got {self.snap!r}")
        if min(self.fade_in_s, self.fade_out_s, self.crossfade_s) < 0:
            raise ValueError("fades and crossfade must be ≥ 0")
        if self.max_degree not in DEGREES:
            raise ValueError(f"the projection's max_degree must be one of {DEGREES}, got {self.max_degree}")
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {self.choice!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "moments", "version": ANALYSIS_VERSION, **asdict(self)}
        return {**d, "spec_id": hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]}

    @property
    def spec_id(self) -> str:
        return self.to_dict()["spec_id"]

    @property
    def analysis_id(self) -> str:
        """What a cached analysis depends on (not the cut settings)."""
        key = {"version": ANALYSIS_VERSION, "block_s": self.block_s, "sample_rate": self.sample_rate,
               "max_track_s": self.max_track_s}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WindowSpec":
        if d.get("kind") != "moments" or d.get("version") != ANALYSIS_VERSION:
            raise MomentError(f"not a moments window spec of version {ANALYSIS_VERSION}: {d.get('kind')!r} "
                              f"v{d.get('version')!r}. Fix: export the bundle again.")
        names = set(cls.__dataclass_fields__)
        # a spec saved before degree 2 was made under the linear projection; one saved before the choice took the argmax
        d = {"max_degree": 1, "choice": "argmax", **d}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """One track: block sums (n_blocks, len(BLOCK_COLUMNS)), beat times (s), which beats are downbeats."""

    blocks: np.ndarray
    beats: np.ndarray
    downbeat: np.ndarray  # bool per beat; all False when no downbeat phase was found
    duration: float
    tempo: float  # the beat tracker's global estimate (BPM), 0 when no beat was found

    @property
    def has_beat(self) -> bool:
        return len(self.beats) >= MIN_BEATS

    def arrays(self) -> dict[str, np.ndarray]:
        return {"blocks": self.blocks.astype(np.float32), "beats": self.beats.astype(np.float64),
                "downbeat": self.downbeat.astype(bool), "meta": np.array([self.duration, self.tempo], np.float64)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "Analysis":
        blocks = np.asarray(a["blocks"], np.float32)
        if blocks.ndim != 2 or blocks.shape[1] != len(BLOCK_COLUMNS) or not np.isfinite(blocks).all():
            raise MomentError(f"analysis blocks of shape {blocks.shape}, want (n, {len(BLOCK_COLUMNS)}) finite")
        beats = np.asarray(a["beats"], np.float64)
        downbeat = np.asarray(a["downbeat"], bool)
        if beats.shape != downbeat.shape:
            raise MomentError("analysis beats and downbeat marks differ in length")
        duration, tempo = (float(v) for v in np.asarray(a["meta"], np.float64))
        return cls(blocks, beats, downbeat, duration, tempo)


def load_samples(path: str | Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 samples of an admitted audio file (the media rule's demuxer allow-list and caps)."""
    from deccm.features import admit, decode

    try:
        return decode.read_audio(path, sample_rate=sample_rate, max_seconds=max_seconds, limits=admit.TRACK).samples
    except admit.DecodeError as e:
        raise MomentError(f"{Path(path).name}: cannot be read for moments: {e}") from None


def analyse(samples: np.ndarray, spec: WindowSpec = WindowSpec()) -> Analysis:
    """Beats and block sums of one track's mono samples at ``spec.sample_rate``."""
    _compile_once(spec.sample_rate)
    return _analyse(np.asarray(samples, np.float32), spec)


@functools.cache
def _compile_once(sr: int) -> None:
    """Compile librosa's numba kernels under the JIT-cache lock (pool workers share a cold cache on a first run)."""
    with jit_cache_lock():
        _analyse(np.random.default_rng(0).standard_normal(2 * sr).astype(np.float32) * 0.1, WindowSpec(sample_rate=sr))


def _analyse(y: np.ndarray, spec: WindowSpec) -> Analysis:
    lr = librosa()
    sr = spec.sample_rate
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    duration = len(y) / sr
    mag = np.abs(lr.stft(y, n_fft=N_FFT, hop_length=HOP))  # (1 + N_FFT/2, T)
    power = mag ** 2
    mel_db = lr.power_to_db(lr.feature.melspectrogram(S=power, sr=sr))
    env = lr.onset.onset_strength(S=mel_db, sr=sr)  # (T,) mean over bands: onset counts and the descriptors
    pulse = lr.onset.onset_strength(S=mel_db, sr=sr, aggregate=np.median)  # what librosa's beat tracker itself uses
    with warnings.catch_warnings():  # librosa warns on tracks without a beat; no beat is an answer here
        warnings.simplefilter("ignore")
        tempo, beat_frames = lr.beat.beat_track(onset_envelope=pulse, sr=sr, hop_length=HOP)
    onsets = lr.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=HOP)
    frame_power = power.mean(axis=0)  # (T,)
    centroid = lr.feature.spectral_centroid(S=mag, sr=sr, n_fft=N_FFT)[0]
    chroma = lr.feature.chroma_stft(S=power, sr=sr, n_fft=N_FFT, tuning=0.0)  # (12, T)
    t = lr.frames_to_time(np.arange(power.shape[1]), sr=sr, hop_length=HOP)
    n_blocks = max(1, int(np.ceil(duration / spec.block_s)))
    block = np.minimum((t / spec.block_s).astype(np.int64), n_blocks - 1)
    onset_count = np.bincount(block[np.minimum(onsets, len(block) - 1)], minlength=n_blocks) if len(onsets) else np.zeros(n_blocks)
    sums = [np.bincount(block, minlength=n_blocks), np.bincount(block, frame_power, n_blocks),
            np.bincount(block, env[: len(block)], n_blocks), onset_count, np.bincount(block, centroid * frame_power, n_blocks)]
    sums += [np.bincount(block, chroma[i], n_blocks) for i in range(12)]
    blocks = np.stack(sums, axis=1).astype(np.float32)
    beats = lr.frames_to_time(np.asarray(beat_frames, np.int64), sr=sr, hop_length=HOP).astype(np.float64)
    at_beats = pulse[np.minimum(np.asarray(beat_frames, np.int64), len(pulse) - 1)] if len(beat_frames) else np.zeros(0)
    found = len(beats) >= MIN_BEATS and at_beats.mean() >= max(BEAT_SALIENCE * float(pulse.mean()), MIN_BEAT_STRENGTH)
    return Analysis(blocks, beats if found else np.zeros(0), _downbeats(np.asarray(beat_frames), pulse) if found else np.zeros(0, bool),
                    duration, float(np.atleast_1d(tempo)[0]) if found else 0.0)


def _downbeats(beat_frames: np.ndarray, env: np.ndarray) -> np.ndarray:
    """Mark every fourth beat from the phase whose beats carry the most onset strength (an estimate: librosa has no
    downbeat tracker); all False when no phase stands out by :data:`DOWNBEAT_MARGIN` or there are under two bars."""
    marks = np.zeros(len(beat_frames), bool)
    if len(beat_frames) < 8:
        return marks
    strength = env[np.minimum(np.asarray(beat_frames, np.int64), len(env) - 1)]
    phase = np.array([strength[p::4].mean() for p in range(4)])
    best = int(phase.argmax())
    if phase[best] < DOWNBEAT_MARGIN * np.delete(phase, best).mean():
        return marks
    marks[best::4] = True
    return marks


# --------------------------------------------------------------------------- windows and their descriptors


def window_starts(duration: float, length: float, hop: float) -> np.ndarray:
    """Start times (s) of windows of ``length`` every ``hop`` that fit in the track; one at 0 when none fits."""
    last = duration - length
    if last <= 0:
        return np.zeros(1)
    starts = np.arange(0.0, last + 1e-9, hop)
    return starts if np.isclose(starts[-1], last) else np.append(starts, last)  # the track's end is a window too


def descriptors(a: Analysis, starts: np.ndarray, length: float, spec: WindowSpec) -> np.ndarray:
    """(W, 6) :data:`DESCRIPTORS` of the windows [start, start + length) from the block sums."""
    n = len(a.blocks)
    cum = np.vstack([np.zeros((1, a.blocks.shape[1])), np.cumsum(a.blocks.astype(np.float64), axis=0)])
    lo = np.clip(np.round(np.asarray(starts) / spec.block_s).astype(np.int64), 0, n - 1)
    hi = np.clip(lo + max(1, int(round(length / spec.block_s))), 1, n)
    s = cum[hi] - cum[lo]  # (W, columns)
    frames = np.maximum(s[:, 0], 1.0)
    power = np.maximum(s[:, 1], 1e-12)
    seconds = frames * HOP / spec.sample_rate
    loud = 10.0 * np.log10(power / frames + 1e-12)
    rate = np.log(s[:, 3] / seconds + 0.1)
    centroid = np.log(np.maximum(s[:, 4] / power, 20.0))
    strength = np.log(s[:, 2] / frames + 1e-3)  # mean onset strength (dB-mel flux per frame)
    from deccm.features.audio import key_strengths  # imported here: serving loads this module without the extractors

    mode = np.array([key_strengths(c)[0] for c in s[:, 5:]])
    tempo = np.full(len(lo), a.tempo if a.tempo > 0 else 120.0)
    for w, (t0, t1) in enumerate(zip(lo * spec.block_s, hi * spec.block_s)):
        inside = a.beats[(a.beats >= t0) & (a.beats < t1)]
        if len(inside) >= 3:
            tempo[w] = 60.0 / float(np.median(np.diff(inside)))
    return np.stack([np.log2(tempo), mode, rate, loud, centroid, strength], axis=1)


def whole(a: Analysis, spec: WindowSpec) -> np.ndarray:
    """(6,) descriptors of the whole track (what the model's track vector was computed from)."""
    return descriptors(a, np.zeros(1), len(a.blocks) * spec.block_s, spec)[0]


RIDGES = (0.1, 1.0, 3.0, 10.0, 30.0, 100.0)  # the projection's ridge strengths tried (on standardised features)


def expand(z: np.ndarray, degree: int) -> np.ndarray:
    """(W, F) the projection's features of standardised descriptors z (W, k): z itself, and for degree 2 also every
    product z_i · z_j, i ≤ j (F = k + k(k + 1)/2). Degree 2 lets a window be scored by how *near* its sound is to what a clip
    wants, not only by how far along each descriptor it goes."""
    if degree == 1:
        return z
    i, j = np.triu_indices(z.shape[1])
    return np.hstack([z, z[:, i] * z[:, j]])


@dataclass
class Projection:
    """Track vector ≈ [1, x(d)] · W: the model's vectors as a function of the first k descriptors d, fitted on the
    catalog. z(d) = (d − mean) / std; x = the standardised columns of :func:`expand` (z, degree). k, the degree and the
    ridge are the triple of :data:`DESCRIPTOR_SETS` × :data:`DEGREES` × :data:`RIDGES` whose leave-one-track-out R² on
    the catalog is highest."""

    mean: np.ndarray  # (k,): k, how many of DESCRIPTORS the map reads
    std: np.ndarray  # (k,)
    weights: np.ndarray  # (1 + F, D')
    r2: float  # share of the catalog vectors' variance the descriptors explain (in sample)
    degree: int = 1
    feature_mean: np.ndarray | None = None  # (F,) of expand(z): None = 0 (projections saved before degree 2)
    feature_std: np.ndarray | None = None  # (F,): None = 1
    ridge: float = 1.0
    loo_r2: float | None = None  # leave-one-track-out R², what chose k, degree and ridge
    low: np.ndarray | None = None  # (k,) the catalog's descriptor range: a window's descriptors are clipped to it,
    high: np.ndarray | None = None  # (k,) as the map is only known there (None: no clip, projections saved before)

    @classmethod
    def fit(cls, d: np.ndarray, vectors: np.ndarray, degrees: tuple[int, ...] = DEGREES,
            ridges: tuple[float, ...] = RIDGES, sets: tuple[int, ...] = DESCRIPTOR_SETS) -> "Projection":
        """The best of the (first k descriptors, degree, ridge) triples by leave-one-track-out R² (closed form: the
        ridge hat matrix); ``d`` (M, ≥ max(sets)) holds every descriptor."""
        d, p = np.asarray(d, np.float64), np.asarray(vectors, np.float64)
        if d.ndim != 2 or d.shape[0] != p.shape[0] or d.shape[0] < 2 or d.shape[1] < max(sets):
            raise MomentError(f"a projection needs {max(sets)} descriptors and vectors for the same ≥ 2 tracks, got "
                              f"{d.shape} and {p.shape}")
        fits = (cls._fit_one(d[:, :k], p, g, lam) for k in sets for g in degrees for lam in ridges)
        return max(fits, key=lambda f: -np.inf if f.loo_r2 is None else f.loo_r2)

    @property
    def columns(self) -> int:
        """k: the map reads the first k of :data:`DESCRIPTORS`."""
        return len(self.mean)

    @classmethod
    def _fit_one(cls, d: np.ndarray, p: np.ndarray, degree: int, ridge: float) -> "Projection":
        """Ridge with the intercept unpenalised, and its leave-one-out R² (ridge > 0 keeps every leverage under 1)."""
        mean, std = d.mean(0), d.std(0)
        std = np.where(std < 1e-9, 1.0, std)
        f = expand((d - mean) / std, degree)
        fm, fs = f.mean(0), f.std(0)
        fs = np.where(fs < 1e-9, 1.0, fs)
        x = np.hstack([np.ones((len(d), 1)), (f - fm) / fs])
        reg = ridge * np.eye(x.shape[1])
        reg[0, 0] = 0.0
        inv = np.linalg.pinv(x.T @ x + reg)
        w = inv @ x.T @ p
        resid = p - x @ w
        total = max(((p - p.mean(0)) ** 2).sum(), 1e-12)
        leverage = np.einsum("ij,jk,ik->i", x, inv, x)  # the hat matrix's diagonal
        loo = 1.0 - float(((resid / np.maximum(1.0 - leverage, 1e-9)[:, None]) ** 2).sum() / total)
        return cls(mean, std, w, 1.0 - float((resid ** 2).sum() / total), degree, fm, fs, ridge, loo, d.min(0), d.max(0))

    def vectors(self, d: np.ndarray) -> np.ndarray:
        """(W, D') the vectors the descriptors ``d`` (W, ≥ k) stand for, each clipped to the catalog's range first."""
        d = np.asarray(d, np.float64)[:, : self.columns]
        if self.low is not None and self.high is not None:
            d = np.clip(d, self.low, self.high)
        f = expand((d - self.mean) / self.std, self.degree)
        if self.feature_mean is not None and self.feature_std is not None:
            f = (f - self.feature_mean) / self.feature_std
        return np.hstack([np.ones((len(f), 1)), f]) @ self.weights

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "weights": self.weights.tolist(), "r2": self.r2,
                "degree": self.degree, "ridge": self.ridge, "loo_r2": self.loo_r2,
                "feature_mean": None if self.feature_mean is None else self.feature_mean.tolist(),
                "feature_std": None if self.feature_std is None else self.feature_std.tolist(),
                "low": None if self.low is None else self.low.tolist(), "high": None if self.high is None else self.high.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Projection":
        """Also reads projections saved before degree 2 (degree 1, features not standardised a second time) and before
        the sixth descriptor (k = 5)."""
        def arr(key: str) -> np.ndarray | None:
            return None if d.get(key) is None else np.asarray(d[key], np.float64)

        degree = int(d.get("degree", 1))
        p = cls(np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64), np.asarray(d["weights"], np.float64),
                float(d["r2"]), degree, arr("feature_mean"), arr("feature_std"), float(d.get("ridge", 1.0)),
                None if d.get("loo_r2") is None else float(d["loo_r2"]), arr("low"), arr("high"))
        k = p.mean.shape[0] if p.mean.ndim == 1 else -1
        width = expand(np.zeros((1, k)), degree).shape[1] if degree in DEGREES and k in DESCRIPTOR_SETS else -1
        if p.std.shape != p.mean.shape or p.weights.shape[0] != width + 1 or (
                p.feature_mean is not None and p.feature_mean.shape != (width,)) or any(
                b is not None and b.shape != p.mean.shape for b in (p.low, p.high)):
            raise MomentError(f"a projection of degree {degree} on {k} descriptors with weights {p.weights.shape} is not one "
                              f"this version reads (descriptors: one of {DESCRIPTOR_SETS}). Fix: export the bundle again.")
        return p


# --------------------------------------------------------------------------- placing and cutting


@dataclass(frozen=True)
class Moment:
    """The part of a track played under a clip: track time [start, start + length), looped from loop_end back to
    start when the track is shorter than the clip. ``beats``: the track's beats inside the moment (track time)."""

    start: float
    length: float
    loop_end: float | None = None  # set when the moment loops: [start, loop_end) repeats
    beats: tuple[float, ...] = ()
    snapped: str = "none"  # "downbeat", "beat" or "none" (no beat found)
    window_start: float = 0.0  # the chosen window before snapping

    @property
    def end(self) -> float:
        """Where the moment leaves the track (track time); for a loop, the loop's end."""
        return self.loop_end if self.loop_end is not None else self.start + self.length

    def cut_points(self) -> list[float]:
        """Track times where the track is cut: the start, and the loop's end when it loops (the fade-out is no cut)."""
        return [self.start] + ([self.loop_end] if self.loop_end is not None else [])

    def to_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "length": round(self.length, 3),
                "loop": self.loop_end is not None, "snapped": self.snapped, "window_start": round(self.window_start, 3),
                "beats": [round(b, 3) for b in self.beats]}


def clock(t: float) -> str:
    """Track time as m:ss.s (how moments are shown)."""
    return f"{int(t // 60)}:{t % 60:04.1f}"


def choose(scores: np.ndarray, starts: np.ndarray, length: float, rule: str = "neighbourhood") -> float:
    """The chosen window's start (ties: the earliest). ``argmax``: the best-scoring window. ``neighbourhood``: the
    window whose neighbourhood scores best on average. Its neighbours are the windows that would count as the same
    moment, IoU ≥ 0.5 with it, which for two windows of one length is a start within length / 3; the neighbourhood is
    kept symmetric (narrower near the first and last start), so the ends of a track are not favoured for having
    neighbours on one side only. The scores are a projection's estimates: a lone window scored above its neighbours
    is more likely its error than the music, the middle of a part that fits throughout is not (docs/method.md §11.4).
    ``starts`` ascend, as :func:`candidate_starts` gives them; a neighbourhood is a run of them (a 15-minute track has
    some 1800 beats, so no W × W matrix)."""
    scores, starts = np.asarray(scores, np.float64), np.asarray(starts, np.float64)
    if rule == "neighbourhood":
        half = np.minimum(length / 3, np.minimum(starts - starts[0], starts[-1] - starts))  # (W,)
        lo = np.searchsorted(starts, starts - half - 1e-9, "left")  # each window's neighbours: starts[lo:hi]
        hi = np.searchsorted(starts, starts + half + 1e-9, "right")
        total = np.concatenate([[0.0], np.cumsum(scores)])
        scores = (total[hi] - total[lo]) / (hi - lo)
    elif rule != "argmax":
        raise MomentError(f"choice must be one of {CHOICES}, got {rule!r}")
    return float(starts[int(np.argmax(scores))])


def place(a: Analysis, window_start: float, length: float, spec: WindowSpec = WindowSpec()) -> Moment:
    """Snap the chosen window to the beat and fit it to ``length`` (see the module docstring)."""
    if length <= 0:
        raise MomentError(f"a moment needs a positive length, got {length}")
    grid = a.beats if a.has_beat and spec.snap != "none" else np.zeros(0)
    down = a.downbeat if len(grid) else np.zeros(0, bool)
    last = a.duration - length
    beat = float(np.median(np.diff(grid))) if len(grid) >= 2 else 0.0
    if a.duration < length + spec.fade_out_s or (len(grid) and not (grid <= last + 1e-6).any() and last < 4 * beat):
        return _loop(a, grid, down, length, spec, window_start)  # too short, or about the clip's length with no beat
        # that leaves room: loop on the beat
    # a downbeat within one beat of the chosen start, else a beat within one bar: never far from the model's window
    for kind, cands, reach in (("downbeat", grid[down] if spec.snap == "downbeat" else grid[:0], beat),
                               ("beat", grid, 4 * beat)):
        ok = cands[cands <= last + 1e-6]
        if len(ok):
            start = float(ok[np.argmin(np.abs(ok - window_start))])
            if abs(start - window_start) <= reach + 1e-6:
                return Moment(start, length, None, _inside(grid, start, start + length), kind, float(window_start))
    start = float(min(max(window_start, 0.0), last))
    return Moment(start, length, None, _inside(grid, start, start + length), "none", float(window_start))


def candidate_starts(a: Analysis, length: float, spec: WindowSpec = WindowSpec()) -> np.ndarray:
    """Where the windows start: on every beat that leaves room for the window (a cut always starts on the beat); the
    ``hop_s`` grid for a track without a beat, or when no beat leaves room."""
    grid = window_starts(a.duration, length, spec.hop_s)
    on = a.beats[a.beats <= a.duration - length + 1e-6]
    if spec.snap == "none" or not a.has_beat or a.duration < length + spec.fade_out_s or len(on) == 0:
        return grid  # no beat to start on (a loop's placement does not use the window)
    return on


def _inside(grid: np.ndarray, t0: float, t1: float) -> tuple[float, ...]:
    return tuple(float(b) for b in grid[(grid >= t0 - 1e-6) & (grid < t1)])


def _loop(a: Analysis, grid: np.ndarray, down: np.ndarray, length: float, spec: WindowSpec, window_start: float) -> Moment:
    """A track shorter than the clip: loop [first downbeat (else beat), a later beat) — whole bars where downbeats were
    found — leaving room for the seam's crossfade after the loop's end; the whole track when it has no beat."""
    room = a.duration - spec.crossfade_s
    if len(grid) >= 2:
        first = int(np.flatnonzero(down)[0]) if down.any() else 0
        step = 4 if down.any() else 1
        ends = [j for j in range(first + step, len(grid), step) if grid[j] <= room]
        if ends:
            start, end = float(grid[first]), float(grid[ends[-1]])
            return Moment(start, length, end, _inside(grid, start, end), "downbeat" if down.any() else "beat", window_start)
    return Moment(0.0, length, max(room, a.duration / 2), (), "none", window_start)


def render(samples: np.ndarray, sr: int, m: Moment, spec: WindowSpec = WindowSpec()) -> np.ndarray:
    """The moment's mono samples: exactly ``round(m.length · sr)`` of them, faded in and out, loops crossfaded."""
    y = np.asarray(samples, np.float32)
    n = int(round(m.length * sr))
    s0 = int(round(m.start * sr))
    if m.loop_end is None:
        out = y[s0:s0 + n].copy()
        if len(out) < n:  # the decoded track came out a little shorter than stated: hold the end, fade out over it
            out = np.pad(out, (0, n - len(out)))
    else:
        out = _looped(y, s0, int(round(m.loop_end * sr)), n, int(round(spec.crossfade_s * sr)))
    fi, fo = min(n, int(round(spec.fade_in_s * sr))), min(n, int(round(spec.fade_out_s * sr)))
    if fi:
        out[:fi] *= np.linspace(0.0, 1.0, fi, dtype=np.float32)
    if fo:
        out[n - fo:] *= np.linspace(1.0, 0.0, fo, dtype=np.float32)
    return out


def _looped(y: np.ndarray, s0: int, s1: int, n: int, xf: int) -> np.ndarray:
    """Repeat y[s0:s1] to n samples; at each seam the track's own continuation past s1 fades out (equal power) while
    the loop's start fades in, so the beat grid runs on unbroken and no sample is silent."""
    unit = s1 - s0
    if unit <= 0:
        raise MomentError("a loop needs a positive length")
    xf = max(0, min(xf, len(y) - s1, unit // 2))
    ramp = np.sin(np.linspace(0.0, np.pi / 2, xf, dtype=np.float32)) if xf else np.zeros(0, np.float32)
    out = np.zeros(n + unit + xf, np.float32)
    pos = 0
    while pos < n:
        seg = y[s0:s1 + xf].copy()
        if pos > 0 and xf:
            seg[:xf] *= ramp  # the loop's start fades in over the previous pass's tail
        if xf:
            seg[unit:] *= ramp[::-1]  # the continuation past the loop end fades out
        out[pos:pos + len(seg)] += seg
        pos += unit
    return out[:n]


def write_wav(dest: str | Path, samples: np.ndarray, sr: int) -> Path:
    """16-bit PCM mono WAV, written atomically (what the players and the mux read)."""
    import wave

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with safeio.atomic_path(dest) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(pcm.tobytes())
    return Path(dest)


# --------------------------------------------------------------------------- a catalog's moments


def cache_dir() -> Path:
    """``$DECCM_HOME/cache/moments``: analyses by (analysis id, audio sha256)."""
    from deccm import config

    return config.state_path("cache", "moments")


def analyse_file(path: str | Path, sha: str, spec: WindowSpec, cache: Path | None = None) -> Analysis:
    """A track's analysis, from the cache when its content was analysed under the same settings before."""
    where = (cache or cache_dir()) / spec.analysis_id / sha[:2] / f"{sha}.npz"
    if where.is_file():
        try:
            return Analysis.from_arrays(safeio.load_npz(where))
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable cached analysis; analysing again", where)
    a = analyse(load_samples(path, spec.sample_rate, spec.max_track_s), spec)
    safeio.save_npz(where, **a.arrays())
    return a


VARIABLE = ("blocks", "beats", "downbeat")  # an analysis's arrays whose length differs per track (saved with offsets)


@dataclass
class Moments:
    """A catalog's analyses (None for a track without audio) and the projection fitted on it."""

    spec: WindowSpec
    analyses: list[Analysis | None]
    projection: Projection
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, audio: list[tuple[str, str]], vectors: np.ndarray, spec: WindowSpec = WindowSpec(),
              cache: Path | None = None) -> "Moments":
        """Analyse each track's audio ((path, sha256); "" where none) and fit the projection on the analysed ones."""
        from tqdm import tqdm

        analyses: list[Analysis | None] = []
        notes = []
        for i, (path, sha) in enumerate(tqdm(audio, desc="moments: analyse tracks", unit="track", leave=False)):
            if not path:
                analyses.append(None)
                continue
            try:
                analyses.append(analyse_file(path, sha or safeio.sha256_file(path), spec, cache))
            except MomentError as e:
                notes.append(f"track {i}: {e}")
                analyses.append(None)
        have = [i for i, a in enumerate(analyses) if a is not None]
        if len(have) < 2:
            raise MomentError(f"moments need at least two tracks with readable audio, the catalog has {len(have)}. Fix: "
                              "serve a catalog with media (or turn moments off).")
        d = np.stack([whole(analyses[i], spec) for i in have])  # type: ignore[arg-type]
        proj = Projection.fit(d, np.asarray(vectors)[have], tuple(range(1, spec.max_degree + 1)))
        log.info("moments: %d tracks analysed, projection of %d descriptors, degree %d (ridge %g): R² %.2f on the catalog, "
                 "%.2f left out", len(have), proj.columns, proj.degree, proj.ridge, proj.r2,
                 proj.loo_r2 if proj.loo_r2 is not None else float("nan"))
        return cls(spec, analyses, proj, notes)

    def window_vectors(self, a: Analysis, length: float) -> tuple[np.ndarray, np.ndarray]:
        """(starts, V): the windows of ``length`` in a track (:func:`candidate_starts`) and (W, D') vectors whose dot
        with a clip's query is each window's score: the whole window's projected vector plus the mean of its two
        halves' (method §11.4: a window that joins a part that fits too little to one that fits too much then scores
        below what its average sounds like)."""
        starts = candidate_starts(a, length, self.spec)

        def projected(at: np.ndarray, span: float) -> np.ndarray:
            return self.projection.vectors(descriptors(a, at, span, self.spec))

        halves = projected(np.concatenate([starts, starts + length / 2]), length / 2).reshape(2, len(starts), -1)
        return starts, projected(starts, length) + halves.mean(axis=0)

    def window_scores(self, a: Analysis, query: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
        """(starts, scores): each window's score for a clip with query vector ``query`` (:meth:`window_vectors`)."""
        starts, vectors = self.window_vectors(a, length)
        return starts, vectors @ np.asarray(query, np.float64)

    def moment(self, track: int, query: np.ndarray, length: float) -> Moment:
        """The moment of catalog ``track`` for a clip with query vector ``query`` (D',) lasting ``length`` seconds."""
        return self.moment_in(self._analysis(track), query, length)

    def moment_in(self, a: Analysis, query: np.ndarray, length: float) -> Moment:
        """The moment of any analysed track (e.g. one outside the catalog) for the query and length."""
        starts, scores = self.window_scores(a, query, length)
        return place(a, choose(scores, starts, length, self.spec.choice), length, self.spec)

    def _analysis(self, track: int) -> Analysis:
        a = self.analyses[track] if 0 <= track < len(self.analyses) else None
        if a is None:
            raise MomentError(f"track {track} has no analysed audio, so no moment")
        return a

    def save(self, dest: Path) -> None:
        """``dest/spec.json`` (window spec, projection, which tracks) and ``dest/analyses.npz`` (all tracks, concatenated)."""
        have = [i for i, a in enumerate(self.analyses) if a is not None]
        per_track = [self.analyses[i].arrays() for i in have]  # type: ignore[union-attr]
        arrays: dict[str, np.ndarray] = {"tracks": np.asarray(have, np.int64),
                                         "meta": np.stack([a["meta"] for a in per_track])}
        for key in VARIABLE:
            parts = [a[key] for a in per_track]
            arrays[key] = np.concatenate(parts)
            arrays[f"{key}_offsets"] = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        safeio.save_npz(dest / "analyses.npz", **arrays)
        safeio.write_json(dest / "spec.json", {"window_spec": self.spec.to_dict(), "projection": self.projection.to_json(),
                                           "n_tracks": len(self.analyses), "notes": self.notes})

    @classmethod
    def load(cls, src: Path) -> "Moments":
        meta = json.loads((src / "spec.json").read_text())
        arrays = safeio.load_npz(src / "analyses.npz")
        analyses: list[Analysis | None] = [None] * int(meta["n_tracks"])
        for j, i in enumerate(arrays["tracks"]):
            part = {k: arrays[k][arrays[f"{k}_offsets"][j]:arrays[f"{k}_offsets"][j + 1]] for k in VARIABLE}
            analyses[int(i)] = Analysis.from_arrays({**part, "meta": arrays["meta"][j]})
        return cls(WindowSpec.from_dict(meta["window_spec"]), analyses, Projection.from_json(meta["projection"]),
                   list(meta.get("notes") or []))
