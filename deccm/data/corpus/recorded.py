"""Real recorded music from Debian's free game-soundtrack packages: find, excerpt, measure, licence.

Debian's main archive ships DFSG-free soundtracks as plain Ogg/Opus/MP3 files (or zipped in a
Quake-style ``.pk3``), each package with a ``copyright`` file. :data:`PACKAGES` names the
ones the ``recorded`` corpus reads and where their music lies; ``make demo-recorded`` (and
``make demo DEMO_SOURCE=recorded``) installs any that are missing.

For each track the catalog records title and artist (the file's tags, else the album's
``album.json`` for Warzone 2100, else the file name and the licence's copyright holder),
the package, the licence and copyright line that the package's copyright file gives for
*that file* (``deccm.data.licences``: DEP-5 globs, last match wins; free-form files
through a small recogniser), the full duration, and measured descriptors.

**A bounded excerpt, not the whole track.** Each track contributes one
:data:`EXCERPT_S`-second excerpt starting a third of the way in (clamped to fit; a shorter
track is taken whole). Why: the clips it is matched with last 4–8 s and an editor cuts a
part of a track, never 5 minutes of it; feature extraction costs about 1 CPU-s per 20 s of
audio, so whole tracks (230 of them, 3–8 min each, ~17 h in all) would cost an hour before
training, against 3 minutes for the excerpts; and a third of the way in is past the intro
and before the fade-out, in the body of the piece. The excerpt is what is measured,
extracted, stored and played, and the table says so ("excerpt at m:ss of m:ss").

Descriptors, measured with librosa on the excerpt (22.05 kHz mono):

* ``tempo_bpm``: ``librosa.feature.tempo`` of the onset-strength envelope;
* ``key`` / ``mode_strength``: the best of the 24 Aarden–Essen key profiles correlated with
  the mean CQT chroma, and best major r − best minor r (``mode``: major when > 0), as the
  music feature extractor computes them (``deccm.features.audio.best_key``);
* ``onsets_per_s`` (onset-detector events a second) and ``rms_db`` (loudness, dBFS): energy;
* ``centroid_hz``: the median spectral centroid of the sounding frames (within 20 dB of the
  loudest): brightness.

Shown as tags ("fast · minor · energetic · bright", each against the catalog's terciles),
they stand in for the genre labels that the packages don't have.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deccm.data import licences
from deccm.features import admit
from deccm.features.audio import best_key
from deccm.features.runtime import jit_cache_lock, librosa

log = logging.getLogger(__name__)

SAMPLE_RATE = 22_050
EXCERPT_S = 30.0
MIN_TRACK_S = 10.0  # shorter files are jingles and stingers, not tracks


@dataclass(frozen=True)
class Package:
    """One Debian package of free music: which of its files are music, and the group it forms."""

    name: str
    group: str  # the "genre" group of its tracks (the confounder's unit): the soundtrack
    title: str  # what it is, in words
    include: str = "*"  # fnmatch pattern over installed paths (or pk3 member paths) that are music


# most → least popular on the demo platform (the planted popularity the uploaders' taste leans toward)
PACKAGES = (
    Package("wesnoth-1.16-music", "wesnoth", "The Battle for Wesnoth soundtrack"),
    Package("ufoai-music", "ufoai", "UFO: Alien Invasion soundtrack", "*/music/*"),
    Package("warzone2100-music", "warzone2100", "Warzone 2100 soundtracks (original, legacy, Aftermath)"),
    Package("drascula-music", "drascula", "Drascula: The Vampire Strikes Back soundtrack", "*/drascula/audio/*"),
    Package("nexuiz-music", "nexuiz", "Nexuiz soundtrack", "*/cdtracks/*"),
    Package("hyperrogue-music", "hyperrogue", "HyperRogue soundtrack", "*/hyperrogue/music/*"),
    Package("singularity-music", "singularity", "Endgame: Singularity soundtrack"),
    Package("planetblupi-music-ogg", "planetblupi", "Planet Blupi soundtrack"),
    Package("asc-music", "asc", "Advanced Strategic Command soundtrack"),
)
GROUPS = tuple(p.group for p in PACKAGES)


@dataclass(frozen=True)
class Source:
    """One music file of a package: a plain file, or a member of a zip archive (``.pk3``)."""

    index: int
    package: Package
    path: str  # installed path; for a zip member, the archive's folder joined with the member path
    archive: str = ""  # the .pk3 holding it, else ""
    member: str = ""


@dataclass
class Track:
    """One excerpted track: metadata, licence, measured descriptors, file and timings."""

    index: int
    genre: str  # the package's group
    package: str
    title: str
    artist: str
    source: str  # where it came from: "debian package P: /usr/share/…"
    licence: str  # short name from the copyright file ("" = unknown: never served by default)
    copyright: str
    licence_basis: str
    duration_s: float  # the whole recording
    start_s: float  # where the excerpt starts
    excerpt_s: float
    tempo_bpm: float
    key: str
    mode: str
    mode_strength: float
    onsets_per_s: float
    rms_db: float
    centroid_hz: float
    audio: str  # file name inside the track directory
    render_s: float  # decode + measure
    encode_s: float


# --------------------------------------------------------------------------- finding the files


def installed_files(package: str) -> list[str]:
    """Paths ``dpkg -L`` lists for an installed package ([] when it is not installed)."""
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def missing_packages() -> list[str]:
    """The :data:`PACKAGES` that are not installed here (``make`` installs them)."""
    return [p.name for p in PACKAGES if not installed_files(p.name)]


def find_sources(packages: tuple[Package, ...] = PACKAGES) -> list[Source]:
    """Every music file of the installed ``packages``, in package order then path order."""
    found: list[Source] = []
    for pkg in packages:
        files = installed_files(pkg.name)
        if not files:
            log.warning("package %s is not installed: its tracks are left out (make installs it)", pkg.name)
            continue
        rows: list[tuple[str, str, str]] = []
        for f in files:
            low = f.lower()
            if Path(low).suffix in admit.AUDIO_EXTENSIONS and Path(f).is_file():
                rows.append((f, "", ""))
            elif low.endswith(".pk3") and Path(f).is_file():
                with zipfile.ZipFile(f) as z:
                    rows += [(f"{Path(f).parent}/{m}", f, m) for m in z.namelist() if Path(m.lower()).suffix in admit.AUDIO_EXTENSIONS]
        for path, archive, member in sorted(set(rows)):
            if fnmatch.fnmatchcase(path, pkg.include):
                found.append(Source(len(found), pkg, path, archive, member))
    return found


@contextlib.contextmanager
def local_file(src: Source) -> Iterator[Path]:
    """The music file on disk: the installed one, or a zip member extracted to a temp file, so the media rule admits it."""
    if not src.archive:
        yield Path(src.path)
        return
    with tempfile.TemporaryDirectory(prefix="deccm-pk3-") as tmp:
        dest = Path(tmp) / Path(src.member).name
        with zipfile.ZipFile(src.archive) as z, z.open(src.member) as f, open(dest, "wb") as out:
            shutil.copyfileobj(f, out)
        yield dest


# --------------------------------------------------------------------------- titles


def _album_titles(folder: Path) -> dict[str, tuple[str, str]]:
    """file name → (title, author) from a Warzone-2100-style ``album.json`` beside the files."""
    path = folder / "album.json"
    try:
        album = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    author = str(album.get("author") or "")
    return {str(t.get("filename")): (str(t.get("title") or ""), str(t.get("author") or author))
            for t in album.get("tracks", []) if isinstance(t, dict) and t.get("filename")}


def _title_from_name(path: str) -> str:
    """``hr-domina-hunting.ogg`` → ``Hr domina hunting``; ``Crystan-Battlescape01`` → ``Crystan Battlescape 01``."""
    stem = re.sub(r"[_\-]+", " ", Path(path).stem)
    stem = re.sub(r"(?<=[a-z])(?=[0-9])", " ", stem).strip()
    return stem[:1].upper() + stem[1:]


def _holder(copyright_: str) -> str:
    """The first holder of a copyright line, without years: ``2011-2021 Zeno Rogue <z@x>`` → ``Zeno Rogue``."""
    first = re.split(r"\s{2,}|;|\n", copyright_.strip())[0] if copyright_ else ""
    first = re.sub(r"<[^>]*>|\([^)]*\)|(?i:copyright|\(c\)|©)", " ", first)
    first = re.sub(r"^[\s\d,\-–]+", "", first)
    return " ".join(first.split()).strip(" ,")


def describe(src: Source, tags: dict[str, list[str]], grant: licences.Grant) -> dict[str, str]:
    """title / artist / source / licence / copyright for ``tracks.csv``."""
    album = _album_titles(Path(src.path).parent)
    name = Path(src.path).name
    title = (tags.get("title") or [""])[0].strip() or (album.get(name, ("", ""))[0]) or _title_from_name(name)
    artist = ((tags.get("artist") or [""])[0].strip() or album.get(name, ("", ""))[1]
              or _holder(grant.copyright) or src.package.title)
    where = f"{src.archive} → {src.member}" if src.archive else src.path
    return {"title": title, "artist": artist, "source": f"debian package {src.package.name}: {where}",
            "licence": grant.licence or "", "copyright": grant.copyright, "licence_basis": grant.basis}


# --------------------------------------------------------------------------- measuring

def measure(y: np.ndarray, sr: int = SAMPLE_RATE) -> dict[str, Any]:
    """The excerpt's descriptors (see the module docstring)."""
    _compile_once()
    return _measure(y, sr)


@functools.cache
def _compile_once() -> None:
    """Compile librosa's numba kernels under the JIT-cache lock (workers share a cold cache on a first run)."""
    with jit_cache_lock():
        _measure(np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE).astype(np.float32) * 0.1, SAMPLE_RATE)


def _measure(y: np.ndarray, sr: int) -> dict[str, Any]:
    lr = librosa()
    y = np.asarray(y, dtype=np.float32)
    onset_env = lr.onset.onset_strength(y=y, sr=sr)
    tempo = lr.feature.tempo(onset_envelope=onset_env, sr=sr)
    onsets = lr.onset.onset_detect(onset_envelope=onset_env, sr=sr)
    with warnings.catch_warnings():  # the CQT's lowest octaves warn on short signals; the pitch classes are fine
        warnings.simplefilter("ignore", UserWarning)
        key, strength = best_key(lr.feature.chroma_cqt(y=y, sr=sr).mean(axis=1))
    mode = "major" if strength >= 0 else "minor"
    mag = np.abs(lr.stft(y))
    frame_rms = lr.feature.rms(S=mag)[0]
    sounding = frame_rms >= 0.1 * frame_rms.max() if frame_rms.max() > 0 else np.ones_like(frame_rms, dtype=bool)
    centroid = float(np.median(lr.feature.spectral_centroid(S=mag, sr=sr)[0][sounding]))  # silent frames have none
    rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    seconds = len(y) / sr
    return {"tempo_bpm": round(float(np.atleast_1d(tempo)[0]), 2), "key": key, "mode": mode,
            "mode_strength": round(strength, 4), "onsets_per_s": round(len(onsets) / seconds, 3),
            "rms_db": round(float(20 * np.log10(rms + 1e-9)), 2), "centroid_hz": round(centroid, 1)}


def excerpt_window(duration_s: float, excerpt_s: float = EXCERPT_S) -> tuple[float, float]:
    """(start, length): a third of the way in, clamped so the excerpt fits; a short track whole."""
    if duration_s <= excerpt_s:
        return 0.0, duration_s
    return float(np.floor(min(duration_s / 3.0, duration_s - excerpt_s) * 100) / 100), excerpt_s  # rounded down: fits


def decode(path: Path, start_s: float, seconds: float) -> np.ndarray:
    """Mono float32 samples at :data:`SAMPLE_RATE` of ``seconds`` from ``start_s``, through the media rule.

    ``deccm.features.admit`` admits the file as audio first (allow-listed demuxer from its
    content, duration capped by ``admit.TRACK``); ffmpeg then opens it with that demuxer and
    the ``file`` protocol forced, under a timeout.
    """
    from deccm.data.corpus.video import FFMPEG_TIMEOUT_S

    info = admit.check(path, "audio", admit.TRACK)
    with tempfile.TemporaryDirectory(prefix="deccm-excerpt-") as tmp:
        raw = Path(tmp) / "excerpt.f32"
        admit.run_ffmpeg(["-ss", f"{start_s:.2f}", "-t", f"{seconds:.2f}", *info.ffmpeg_input(), "-map", "0:a:0",
                          "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", str(raw)], timeout=FFMPEG_TIMEOUT_S)
        y = np.fromfile(raw, dtype="<f4")
    if len(y) < SAMPLE_RATE * min(seconds, MIN_TRACK_S) * 0.9:
        raise ValueError(f"{path}: only {len(y) / SAMPLE_RATE:.1f} s decoded of the {seconds:.1f} s asked for")
    return y


def excerpt_track(src: Source, out_dir: str, excerpt_s: float = EXCERPT_S) -> Track:
    """Read tags and licence, decode the excerpt, measure it and encode it as MP3 into ``out_dir`` (runs in a worker)."""
    import mutagen

    from deccm.data.corpus.music import encode_mp3

    t0 = time.perf_counter()
    with local_file(src) as path:
        info = mutagen.File(path, easy=True)
        if info is None or not getattr(info, "info", None):
            raise ValueError(f"{src.path}: not an audio file mutagen can read")
        duration = float(info.info.length)
        if duration < MIN_TRACK_S:
            raise ValueError(f"{src.path}: {duration:.1f} s is shorter than a track ({MIN_TRACK_S:.0f} s)")
        tags = {k: [str(v) for v in vs] for k, vs in (info.tags or {}).items()} if info.tags else {}
        start, seconds = excerpt_window(duration, excerpt_s)
        y = decode(path, start, seconds)
    grant = licences.package_licence(src.package.name, src.path)
    props = measure(y)
    render_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    name = f"{src.index:04d}.mp3"
    encode_mp3(y, Path(out_dir) / name)
    meta = describe(src, tags, grant)
    return Track(index=src.index, genre=src.package.group, package=src.package.name, **meta, duration_s=round(duration, 2),
                 start_s=start, excerpt_s=round(len(y) / SAMPLE_RATE, 2), **props, audio=name, render_s=render_s,
                 encode_s=time.perf_counter() - t1)


def worker_init() -> None:
    """Quiet librosa's warnings in the worker (a skipped file is logged by the caller)."""
    warnings.filterwarnings("ignore")


# --------------------------------------------------------------------------- descriptors as tags and vectors


def percentiles(x: np.ndarray) -> np.ndarray:
    """Each value's place in the catalog, mapped to [-1, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.zeros_like(x)
    return 2.0 * (rankdata(x) - 1.0) / (len(x) - 1.0) - 1.0


def music_vector(tempo_bpm: np.ndarray, mode_strength: np.ndarray, onsets_per_s: np.ndarray, rms_db: np.ndarray,
                 centroid_hz: np.ndarray) -> np.ndarray:
    """(M, 4) music property vectors ``(tempo, mode, energy, brightness)`` in [-1, 1], each against the catalog.

    ``tempo``, ``mode`` (major − minor key correlation) and ``brightness`` (spectral
    centroid) are catalog percentiles; ``energy`` is the mean of the onset-rate and loudness
    percentiles. Percentiles, not fixed constants: recorded music spreads unevenly (most
    game music sits between 90 and 130 BPM), and the planted relation needs the whole range.
    """
    energy = 0.5 * percentiles(onsets_per_s) + 0.5 * percentiles(rms_db)
    return np.stack([percentiles(tempo_bpm), percentiles(mode_strength), energy, percentiles(centroid_hz)], axis=1)


def tags(q: np.ndarray, mode: list[str]) -> list[str]:
    """Readable tags per track from its music vector: the catalog's upper / lower third of each descriptor."""
    out = []
    for (tempo, _, energy, bright), m in zip(np.asarray(q), mode):
        words = ["fast" if tempo > 1 / 3 else "slow" if tempo < -1 / 3 else "mid-tempo", m,
                 "energetic" if energy > 1 / 3 else "calm" if energy < -1 / 3 else "moderate",
                 "bright" if bright > 1 / 3 else "dark" if bright < -1 / 3 else "mellow"]
        out.append(" · ".join(words))
    return out
