"""Music features: the method's 256-d vector = [embedding block 128 ‖ descriptor block 128].

- embedding block: VGGish, mean over the clip's 0.96 s patches (``deccm.features.vggish``);
- descriptor block: openSMILE eGeMAPSv02 functionals (88) ‖ 40 librosa descriptors
  (:data:`LIBROSA_DESCRIPTORS`: tempo, onset strength, chroma, key mode and clarity, MFCC,
  spectral statistics).

All three read the same decode: the first audio stream, mono, 16 kHz, at most
``max_seconds`` (default 60 s, capped and noted), zero-padded to at least one VGGish
patch (0.975 s) so very short clips still give finite values.

Normalisation (per dimension z-score of the whole 256-d vector) is fitted on the training
catalog (:func:`fit_norm`) and saved beside the features; :class:`MusicExtractor` given
the same ``norm`` applies exactly that transform to a new track at serving time.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np

from deccm.features import decode, vggish
from deccm.features.runtime import jit_cache_lock, librosa
from deccm.features.spec import ExtractorSpec, HasSpec, SpecMismatch, require_same

VERSION = 3  # 2: key_mode and key_clarity replace the stds of spectral flatness and zero-crossing rate; 3: Aarden-Essen key profiles
NAME = "vggish+egemaps+librosa"
DIM = 256
OPENSMILE_DIM = 88
N_FFT = 2048
HOP = 512
N_MFCC = 13
KEY_HOP = 2048  # constant-Q chroma hop for key finding (a multiple of 2^(octaves-1))
MIN_SAMPLES = vggish.WINDOW_LENGTH + (vggish.PATCH_FRAMES - 1) * vggish.HOP_LENGTH
NORM_STD_FLOOR = 1e-8

LIBROSA_DESCRIPTORS: tuple[str, ...] = (
    ("tempo_bpm", "onset_strength_mean", "onset_strength_std")
    + tuple(f"chroma_{p}_mean" for p in ("C", "Cs", "D", "Ds", "E", "F", "Fs", "G", "Gs", "A", "As", "B"))
    + ("key_mode", "key_clarity")
    + tuple(f"mfcc_{i:02d}_mean" for i in range(1, N_MFCC + 1))
    + tuple(f"{name}_{stat}" for name in ("spectral_centroid_hz", "spectral_bandwidth_hz", "spectral_rolloff_hz", "rms")
            for stat in ("mean", "std"))
    + ("spectral_flatness_mean", "zero_crossing_rate_mean")
)
assert len(LIBROSA_DESCRIPTORS) == 40

# Aarden–Essen key profiles (pitch-class frequencies in the Essen folk-song collection), tonic
# first: music21's default key finder. On the demo catalog's audio they agree with the score's
# mode far better than the Krumhansl–Kessler probe-tone ratings (docs/results.md: correlation
# 0.80 against 0.66, mode right for 91 % of tracks against 84 %).
MAJOR_PROFILE = np.array([17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587, 0.291248, 22.062, 0.145624,
                          8.15494, 0.232998, 4.95122])
MINOR_PROFILE = np.array([18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362, 0.702494, 18.6161, 4.56621,
                          1.93186, 7.37619, 1.75623])
# (24, 12): row k = a profile rotated to tonic k (major keys, then minor), z-scored
_KEYS = np.stack([np.roll(p, k) for p in (MAJOR_PROFILE, MINOR_PROFILE) for k in range(12)])
_KEYS = (_KEYS - _KEYS.mean(1, keepdims=True)) / _KEYS.std(1, keepdims=True)


def key_strengths(chroma_mean: np.ndarray) -> tuple[float, float]:
    """(mode, clarity) of a 12-bin chroma profile by Krumhansl–Schmuckler key finding (Aarden–Essen profiles).

    r_major(k), r_minor(k) = Pearson correlation of the profile with the major / minor key
    profile rotated to tonic k; mode = max_k r_major − max_k r_minor (> 0 sounds major),
    clarity = max over all 24 keys (how tonal the track is). Mode is what the chroma means
    alone cannot give a linear model: it depends on which key the profile matches.
    """
    c = np.asarray(chroma_mean, dtype=np.float64)
    if not np.isfinite(c).all() or c.std() < 1e-12:  # silence or a flat profile: no key
        return 0.0, 0.0
    r = _KEYS @ ((c - c.mean()) / c.std()) / 12.0  # (24,) correlations: 12 major keys, then 12 minor
    major, minor = r[:12].max(), r[12:].max()
    return float(major - minor), float(max(major, minor))


PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def best_key(chroma_mean: np.ndarray) -> tuple[str, float]:
    """("A minor", mode) for a 12-bin chroma profile: the best of the 24 keys, and :func:`key_strengths`' mode."""
    c = np.asarray(chroma_mean, dtype=np.float64)
    mode, _ = key_strengths(c)
    if c.std() < 1e-12 or not np.isfinite(c).all():
        return "none", 0.0
    r = _KEYS @ ((c - c.mean()) / c.std())
    k = int(r.argmax())
    return f"{PITCH_CLASSES[k % 12]} {'major' if k < 12 else 'minor'}", mode


class FeatureError(ValueError):
    """Audio that decoded but gives no usable features (e.g. non-finite descriptors)."""


@functools.cache
def _smile():
    """One openSMILE extractor per process (building it parses the config: ~1 s)."""
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)


def opensmile_functionals(samples: np.ndarray, sample_rate: int = decode.SAMPLE_RATE) -> np.ndarray:
    """(88,) eGeMAPSv02 functionals over the whole clip."""
    frame = _smile().process_signal(np.asarray(samples, dtype=np.float32), sample_rate)
    return frame.to_numpy(dtype=np.float64).reshape(-1)


def opensmile_names() -> list[str]:
    """The 88 eGeMAPSv02 functional names, in vector order."""
    return list(_smile().feature_names)


def librosa_descriptors(samples: np.ndarray, sample_rate: int = decode.SAMPLE_RATE) -> np.ndarray:
    """(40,) descriptors in :data:`LIBROSA_DESCRIPTORS` order, from one STFT (2048-point, hop 512) and, for the key, a CQT."""
    _compile_once()
    return _descriptors(samples, sample_rate)


@functools.cache
def _compile_once() -> None:
    """Compile librosa's numba kernels in this process while holding a lock on the JIT cache.

    Processes compiling the same kernels into a cold cache at once race on its files: in a
    first ``make demo`` (fresh ``$DECCM_HOME``) one music worker loaded a half-written entry
    and died with a segfault. Under the lock the first process compiles and writes, the
    others (pool workers, parallel pipeline shards) wait and then only read.
    """
    with jit_cache_lock():
        _descriptors(np.random.default_rng(0).standard_normal(decode.SAMPLE_RATE).astype(np.float32) * 0.1, decode.SAMPLE_RATE)


def _descriptors(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    lr = librosa()
    y = np.asarray(samples, dtype=np.float32)
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    mag = np.abs(lr.stft(y, n_fft=N_FFT, hop_length=HOP))
    power = mag ** 2
    mel_db = lr.power_to_db(lr.feature.melspectrogram(S=power, sr=sample_rate))
    onset = lr.onset.onset_strength(S=mel_db, sr=sample_rate)
    tempo = lr.feature.tempo(onset_envelope=onset, sr=sample_rate, hop_length=HOP, aggregate=np.mean)
    chroma = lr.feature.chroma_stft(S=power, sr=sample_rate, n_fft=N_FFT, tuning=0.0)
    mfcc = lr.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)
    spectral = [
        lr.feature.spectral_centroid(S=mag, sr=sample_rate, n_fft=N_FFT),
        lr.feature.spectral_bandwidth(S=mag, sr=sample_rate, n_fft=N_FFT),
        lr.feature.spectral_rolloff(S=mag, sr=sample_rate, n_fft=N_FFT),
        lr.feature.rms(S=mag, frame_length=N_FFT),
    ]
    with warnings.catch_warnings():  # the CQT's lowest octaves warn on clips of a few seconds; the values are fine
        warnings.simplefilter("ignore", UserWarning)
        key_chroma = lr.feature.chroma_cqt(y=y, sr=sample_rate, hop_length=KEY_HOP, tuning=0.0)  # cleaner pitch classes
    parts = [np.atleast_1d(tempo)[:1], [onset.mean(), onset.std()], chroma.mean(axis=1),
             key_strengths(key_chroma.mean(axis=1)), mfcc.mean(axis=1)]
    parts += [[s.mean(), s.std()] for s in spectral]
    parts += [[lr.feature.spectral_flatness(S=mag).mean(),
               lr.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP).mean()]]
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])


def fit_norm(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over the catalog's raw vectors; a (near-)constant dimension gets std 1.

    Std 1 rather than a tiny floor keeps a dimension that was constant on the catalog
    from exploding on a new track: it is only centred.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] == 0:
        raise ValueError("fit_norm needs at least one raw vector (a non-empty (N, D) array)")
    mean = raw.mean(axis=0)
    std = raw.std(axis=0)
    std = np.where(std < NORM_STD_FLOOR, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def apply_norm(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(raw - mean) / std`` as float32; shapes must match the vector length."""
    raw = np.asarray(raw, dtype=np.float32)
    if mean.shape != (raw.shape[-1],) or std.shape != (raw.shape[-1],):
        raise ValueError(f"normalisation stats of shape {mean.shape}/{std.shape} do not fit {raw.shape[-1]}-d features")
    return ((raw - mean) / std).astype(np.float32)


NORMALISATION = {"method": "zscore per dimension over the whole vector", "fitted_on": "training catalog",
                 "constant_dims": f"std < {NORM_STD_FLOOR:g} set to 1"}


class MusicExtractor(HasSpec):
    """One track → (256,) music vector; ``norm=(mean, std)`` applies the catalog's normalisation."""

    def __init__(self, *, vggish_weights: str | os.PathLike | None = None, max_seconds: float = 60.0, device: str = "auto",
                 norm: tuple[np.ndarray, np.ndarray] | None = None):
        if max_seconds <= 0:
            raise ValueError("max_seconds must be positive")
        self.max_seconds = float(max_seconds)
        self.embedder = vggish.VGGishEmbedder(vggish_weights, device=device)
        self.norm = None if norm is None else (np.asarray(norm[0], np.float32), np.asarray(norm[1], np.float32))
        if self.norm is not None:
            apply_norm(np.zeros(DIM, np.float32), *self.norm)  # shape check up front

    @functools.cached_property
    def _spec(self) -> dict:
        from importlib.metadata import version

        names = [f"vggish_{i:03d}" for i in range(vggish.EMBEDDING_DIM)] + opensmile_names() + list(LIBROSA_DESCRIPTORS)
        return ExtractorSpec(
            kind="music", name=NAME, version=VERSION, dims=DIM, weights=self.embedder.weights,
            preprocessing={
                "decoder": "pyav", "audio": "first audio stream, mono, 16 kHz", "max_seconds": self.max_seconds,
                "min_seconds": f"zero-padded to {MIN_SAMPLES} samples (one VGGish patch)",
                "vggish": vggish.FRONTEND, "clip_pool": "mean over patches",
                "opensmile": f"opensmile {version('opensmile')} eGeMAPSv02 Functionals",
                "librosa": f"librosa {version('librosa')}, stft n_fft={N_FFT} hop={HOP}, chroma tuning 0, clip mean/std, "
                           "key mode/clarity: Krumhansl-Schmuckler with Aarden-Essen profiles on the mean "
                           f"constant-Q chroma (hop {KEY_HOP})",
            },
            blocks=[
                {"name": "embedding", "start": 0, "stop": 128, "source": "vggish"},
                {"name": "descriptor", "start": 128, "stop": 256, "parts": [
                    {"source": "opensmile eGeMAPSv02 functionals", "start": 128, "stop": 128 + OPENSMILE_DIM},
                    {"source": "librosa", "start": 128 + OPENSMILE_DIM, "stop": 256}]},
                {"name": "feature_names", "names": names},
            ],
        ).to_dict()

    @classmethod
    def from_spec(cls, spec: dict, *, device: str = "auto", vggish_weights: str | os.PathLike | None = None,
                  norm: tuple[np.ndarray, np.ndarray] | None = None) -> "MusicExtractor":
        """The extractor that reproduces ``spec`` (e.g. a registered model's), or :class:`SpecMismatch`.

        VGGish weights are found as usual (flag, env); their sha256 must match the spec's, and a
        spec made without weights is only reproduced without them.
        """
        if spec.get("kind") != "music":
            raise SpecMismatch(f"not a music spec: kind {spec.get('kind')!r}")
        ext = cls(vggish_weights=vggish_weights, max_seconds=spec["preprocessing"]["max_seconds"], device=device, norm=norm)
        require_same(spec, ext.spec, "requested", "rebuilt")
        return ext

    def raw_from_samples(self, samples: np.ndarray) -> np.ndarray:
        """(256,) unnormalised vector from 16 kHz mono audio."""
        y = np.asarray(samples, dtype=np.float32)
        if y.size < MIN_SAMPLES:
            y = np.pad(y, (0, MIN_SAMPLES - y.size))
        vec = np.concatenate([self.embedder.clip_embedding(y), opensmile_functionals(y), librosa_descriptors(y)])
        bad = ~np.isfinite(vec)
        if bad.any():
            names = self._spec["blocks"][-1]["names"]
            shown = ", ".join(names[i] for i in np.flatnonzero(bad)[:5])
            raise FeatureError(f"non-finite audio features ({int(bad.sum())}: {shown}…)")
        return vec.astype(np.float32)

    def extract_raw_with_notes(self, path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
        """The raw vector and the decoder's notes (capped, truncated …)."""
        audio = decode.read_audio(path, sample_rate=decode.SAMPLE_RATE, max_seconds=self.max_seconds)
        return self.raw_from_samples(audio.samples), audio.notes

    def extract_raw(self, path: str | os.PathLike) -> np.ndarray:
        return self.extract_raw_with_notes(path)[0]

    def extract(self, path: str | os.PathLike) -> np.ndarray:
        """(256,) float32: normalised with ``norm`` when given, raw otherwise."""
        raw = self.extract_raw(path)
        return raw if self.norm is None else apply_norm(raw, *self.norm)
