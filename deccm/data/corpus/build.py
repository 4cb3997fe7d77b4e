"""Assemble the demo corpus: tracks, clips, uploaders, rows, features, one native dataset.

Stages (each timed, see :class:`Timings`):

1. **render**: pick pieces per genre group (seeded), assign ensemble / tempo / dynamics,
   parse + synthesise + measure + encode each track in a process pool
   (``deccm.data.corpus.music``); keep each group's quota of successes.
2. **extract** (music): the feature extractor on the encoded ``.mp3`` files; a track it
   cannot read is dropped and logged.
3. **sample**: the confounder story of ``deccm.data.synth`` on real media. Uploaders have
   genre preferences ``d_u ~ Dirichlet(c·G·π)`` skewed toward popular groups
   (``π_g ∝ (g+1)^-s`` in the order of ``catalog.GENRES``). A UGC clip's visual vector is
   drawn around the best-fitting look of a random catalog track (its hidden "mood"),
   ``v = clip(φ(m*) + σ·ε)``; its uploader picks a track with probability
   ``∝ exp(β·a(v, m)) · d_u[genre(m)]^γ`` (``deccm.data.corpus.relation``). ``test`` is drawn
   like training; ``test_oracle`` re-draws the same test clips' tracks from
   ``exp(β·a)`` alone, ``oracle_draws`` times a clip (one row each): picks cost no media, and
   more of them take the pick's noise out of the figure. PGC clips are generated *from* a
   track, ``v = clip(φ(m) + σ_pgc·ε)``: professional matching, no uploader. The ``gate``
   split's ``n_gate`` clips are drawn like UGC clips (logged, confounded picks) from a stream
   of their own, after everything else: every other draw is the same with or without them,
   and the promotion gate scores on clips that chose no epoch.
4. **encode**: every clip drawn with ffmpeg from its visual vector (``deccm.data.corpus.video``),
   in a thread pool (each ffmpeg single-threaded).
5. **extract** (video): features of every clip; a clip that fails drops its rows.
6. **assemble**: train rows carry leave-one-out uploader priors and propensities, ranked
   splits 100 uniform negatives and inverse-popularity weights from training counts only
   (``deccm.data.protocol``, shared with the synthetic benchmark and user data); written
   atomically by ``write_dataset`` with the media attached under ``media/``.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deccm import config
from deccm.data import protocol
from deccm.data.corpus import catalog, music, recorded, relation, video
from deccm.data.format import MEDIA_DIR, N_NEGATIVES, PGC, UGC, PairRows, RankRows, write_dataset

log = logging.getLogger(__name__)

MEDIA = MEDIA_DIR


@dataclass(frozen=True)
class CorpusConfig:
    """Every knob of one corpus size; all of it is recorded under ``generator`` in the manifest."""

    quotas: dict[str, int]  # tracks per genre group
    track_seconds: tuple[float, float]
    n_ugc: int  # UGC clips = rows (train + val + test)
    val_fraction: float
    test_fraction: float
    n_uploaders: int
    n_pgc: int
    clip_seconds: tuple[float, float]
    width: int = 160
    height: int = 120
    fps: int = 12
    extract_fps: float = 0.5  # frames per second the video extractor samples (clips are steady between cuts)
    video_motion: bool = True  # the extractor's motion block: the planted relation uses motion and cut rate
    max_piece_bytes: int | None = None  # skip corpus files with a larger catalog.parse_size (slow to parse)
    zipf_s: float = 1.0  # genre popularity exponent
    uploader_concentration: float = 1.0
    beta: float = 1.5  # affinity sharpness of logged choices (a spreads over about 5 units per clip)
    gamma: float = 1.5  # confounder strength
    video_noise: float = 0.35  # σ: how far a UGC clip's look strays from its hidden mood
    pgc_noise: float = 0.15  # σ_pgc: professional clips fit their track closely
    genre_margin: float = 0.5  # video_genre marks groups whose best track is this close to the best
    prior_smoothing: float = 1.0
    pgc_val_fraction: float = 0.1
    oracle_draws: int = 10  # test_oracle rows per test clip, each an affinity-only pick (docs/results.md, the demo corpus)
    n_gate: int = 0  # clips of the ``gate`` split (0 = none), drawn from a stream of their own after everything else
    catalog: str = "scores"  # "scores": rendered music21 scores; "recorded": Debian's soundtrack packages
    excerpt_seconds: float = 30.0  # recorded: seconds excerpted per track (deccm.data.corpus.recorded)
    seed: int = 0

    @property
    def genres(self) -> tuple[str, ...]:
        """The genre groups, most to least popular: music21 style groups, or one per soundtrack package."""
        return recorded.GROUPS if self.catalog == "recorded" else catalog.GENRES

    @property
    def relation_map(self) -> np.ndarray:
        return relation.RECORDED_MAP if self.catalog == "recorded" else relation.MAP

    @property
    def n_tracks(self) -> int:
        """Tracks asked for (recorded: at most this many; the installed packages hold what they hold)."""
        return sum(self.quotas.values())


SIZES: dict[str, CorpusConfig] = {
    "tiny": CorpusConfig(
        quotas={"folk-dance": 34, "classical-era": 12, "romantic": 8, "chorale": 30, "renaissance": 16, "medieval": 8},
        track_seconds=(3.0, 4.0), n_ugc=140, val_fraction=0.15, test_fraction=0.25, n_uploaders=16, n_pgc=36,
        clip_seconds=(2.0, 3.0), fps=8, max_piece_bytes=200_000, n_gate=20),
    "default": CorpusConfig(
        # sized for make demo's 10-minute first run on 2 cores: feature extraction is the cost (a
        # track about 2 CPU-s, a clip 0.2), so tracks and clips are short and the rows many
        # (docs/results.md and docs/benchmarks.md, "demo corpus")
        quotas={"folk-dance": 42, "classical-era": 19, "romantic": 10, "chorale": 37, "renaissance": 30, "medieval": 22},
        track_seconds=(10.0, 14.0), n_ugc=1400, val_fraction=0.1, test_fraction=0.2, n_uploaders=50, n_pgc=200,
        clip_seconds=(4.0, 8.0), max_piece_bytes=1_200_000, n_gate=140),
    # every track of the installed soundtrack packages (about 230), one 30 s excerpt each; the same clips and rows as
    # "default" so the two corpora compare (docs/results.md, "the recorded catalog")
    "recorded": CorpusConfig(
        quotas={g: 1000 for g in recorded.GROUPS}, track_seconds=(30.0, 30.0), n_ugc=1400, val_fraction=0.1,
        test_fraction=0.2, n_uploaders=50, n_pgc=200, clip_seconds=(4.0, 8.0), catalog="recorded", n_gate=140),
    # tests: 5 s excerpts of about 130 tracks (the protocol needs more than 100), few clips
    "recorded-tiny": CorpusConfig(
        quotas={"ufoai": 64, "drascula": 31, "hyperrogue": 17, "singularity": 16, "asc": 3},
        track_seconds=(5.0, 5.0), n_ugc=140, val_fraction=0.15, test_fraction=0.25, n_uploaders=16, n_pgc=36,
        clip_seconds=(2.0, 3.0), fps=8, catalog="recorded", excerpt_seconds=5.0, n_gate=20),
}


@dataclass
class Timings:
    """Wall-clock seconds per stage (``render``: music, ``encode``: clips)."""

    render: float = 0.0
    encode: float = 0.0
    extract: float = 0.0
    assemble: float = 0.0
    total: float = 0.0
    detail: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- music


def _in_pool(fn: Any, jobs: list[tuple[int, str, tuple[Any, ...]]], workers: int, initializer: Any,
             desc: str) -> dict[int, Any]:
    """``fn(*args)`` for each ``(key, name, args)`` in spawned worker processes, with a progress bar: results by key.

    A job that raises is logged by name and left out (the caller decides what replaces it);
    a worker that dies takes the build down (``BrokenProcessPool``).
    """
    done: dict[int, Any] = {}
    ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer) as pool, logging_redirect_tqdm():
        futures = {pool.submit(fn, *args): (key, name) for key, name, args in jobs}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="track"):
            key, name = futures[fut]
            try:
                done[key] = fut.result()
            except BrokenProcessPool:
                raise
            except Exception as e:
                log.warning("skipped %s: %s", name, e)
    return done


def render_catalog(cfg: CorpusConfig, out: Path, workers: int) -> list[music.Track]:
    """Render each genre group's quota of tracks (spare pieces cover parse failures), ids in catalog order."""
    rng = np.random.default_rng([cfg.seed, 11])
    pieces = catalog.select(cfg.quotas, rng, max_bytes=cfg.max_piece_bytes)
    lo, hi = cfg.track_seconds
    jobs = [music.assign(i, p, rng, float(round(rng.uniform(lo, hi), 1)), cfg.seed) for i, p in enumerate(pieces)]
    log.info("rendering up to %d tracks from %d corpus pieces with %d workers", cfg.n_tracks, len(jobs), workers)
    # a corpus file music21 cannot use is skipped: a spare replaces it
    done = _in_pool(music.render_track, [(job.index, job.piece.rel, (job, str(out))) for job in jobs], workers,
                    music.worker_init, "render tracks")
    kept: list[music.Track] = []
    for genre in catalog.GENRES:
        ok = [done[j.index] for j in jobs if j.piece.genre == genre and j.index in done][: cfg.quotas.get(genre, 0)]
        if len(ok) < cfg.quotas.get(genre, 0):
            log.warning("%s: only %d of %d tracks rendered", genre, len(ok), cfg.quotas[genre])
        kept.extend(ok)
    spare = set(done) - {t.index for t in kept}
    for i in spare:
        for name in (done[i].midi, done[i].audio):
            (out / name).unlink(missing_ok=True)
    log.info("rendered %d tracks (%d spares unused)", len(kept), len(spare))
    return kept


def excerpt_catalog(cfg: CorpusConfig, out: Path, workers: int) -> list[recorded.Track]:
    """Excerpt and measure every music file of the installed packages (each group capped at its quota), ids in order."""
    sources = [s for s in recorded.find_sources() if cfg.quotas.get(s.package.group, 0) > 0]
    if not sources:
        raise RuntimeError("none of the soundtrack packages is installed (" + ", ".join(p.name for p in recorded.PACKAGES)
                           + "). Fix: make music-packages (apt-get install them), then build again.")
    log.info("excerpting up to %d recorded tracks (%.0f s each) with %d workers", len(sources), cfg.excerpt_seconds, workers)
    # a jingle or a file ffmpeg cannot read is skipped
    done = _in_pool(recorded.excerpt_track, [(s.index, s.path, (s, str(out), cfg.excerpt_seconds)) for s in sources],
                    workers, recorded.worker_init, "excerpt tracks")
    kept: list[recorded.Track] = []
    for group in recorded.GROUPS:
        ok = [done[s.index] for s in sources if s.package.group == group and s.index in done][: cfg.quotas.get(group, 0)]
        kept.extend(ok)
    for i in set(done) - {t.index for t in kept}:
        (out / done[i].audio).unlink(missing_ok=True)
    log.info("excerpted %d recorded tracks", len(kept))
    return kept


def _renumber_tracks(tracks: list[Any], out: Path) -> list[Any]:
    """Give the kept tracks ids 0..M-1 and matching file names (via temp names: old and new ids overlap)."""
    def files(t: Any) -> dict[str, str]:  # field → file name (a recorded track has no MIDI)
        return {k: getattr(t, k) for k in ("midi", "audio") if getattr(t, k, None)}

    for t in tracks:
        for name in files(t).values():
            (out / name).rename(out / f"tmp-{name}")
    result = []
    for new, t in enumerate(tracks):
        names = {k: f"{new:04d}{Path(name).suffix}" for k, name in files(t).items()}
        for k, name in files(t).items():
            (out / f"tmp-{name}").rename(out / names[k])
        result.append(replace(t, index=new, **names))
    return result


# --------------------------------------------------------------------------- features


def _extract(kind: str, paths: list[Path], ids: list[str], out: Path, workers: int, **options: Any) -> tuple[Any, list[int]]:
    """Extract features (content-hash cached under ``$DECCM_HOME/cache/features``, so a rerun is cheap).

    Returns the store and, for each of its rows, the position of its input in ``paths``;
    inputs the extractor could not use are logged and left out.
    """
    from deccm.features import extract_batch

    store = extract_batch(kind, inputs=list(paths), out=out, ids=ids, workers=workers, strict=False, **options)
    for path, reason in store.failures:
        log.warning("no %s features for %s (%s): dropping it", kind, path, reason)
    pos = {i: k for k, i in enumerate(ids)}
    return store, [pos[i] for i in store.ids]


# --------------------------------------------------------------------------- sampling


@dataclass
class World:
    """Uploaders, clips' visual vectors and every drawn choice (before any clip exists)."""

    popularity: np.ndarray  # (G,)
    uploader_pref: np.ndarray  # (U, G)
    ugc_props: np.ndarray  # (N, 5)
    ugc_uploader: np.ndarray  # (N,)
    ugc_mood: np.ndarray  # (N,) hidden mood track
    ugc_pick: np.ndarray  # (N,) logged (biased) choice
    video_genre: np.ndarray  # (N, G) uint8
    oracle_pick: np.ndarray  # (N, oracle_draws) affinity-only choices (used for test clips)
    pgc_track: np.ndarray  # (P,)
    pgc_props: np.ndarray  # (P, 5)
    ugc_seconds: np.ndarray
    pgc_seconds: np.ndarray
    gate_props: np.ndarray  # (n_gate, 5) the gate split's clips, drawn like UGC clips from a stream of their own
    gate_uploader: np.ndarray
    gate_pick: np.ndarray
    gate_seconds: np.ndarray


def sample_world(cfg: CorpusConfig, q: np.ndarray, genre: np.ndarray) -> World:
    """Draw uploaders, clips and choices for a catalog with music vectors ``q`` and groups ``genre``."""
    rng = np.random.default_rng([cfg.seed, 22])
    g, m = len(cfg.genres), len(q)
    pop = np.arange(1, g + 1, dtype=np.float64) ** -cfg.zipf_s
    pop /= pop.sum()
    pref = rng.dirichlet(cfg.uploader_concentration * g * pop, size=cfg.n_uploaders)
    pref = np.clip(pref, 1e-6, None)
    pref /= pref.sum(axis=1, keepdims=True)
    activity = rng.lognormal(0.0, 1.0, cfg.n_uploaders)
    uploader = rng.choice(cfg.n_uploaders, size=cfg.n_ugc, p=activity / activity.sum()).astype(np.int64)
    phi = relation.mapped(q, cfg.relation_map)
    mood = rng.integers(m, size=cfg.n_ugc)
    props = np.clip(phi[mood] + cfg.video_noise * rng.standard_normal((cfg.n_ugc, 5)), -1, 1)
    a = relation.affinity(props, q, cfg.relation_map)  # (N, M)
    logits = cfg.beta * a + cfg.gamma * np.log(pref[uploader][:, genre])
    pick = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    oracle = np.argmax(cfg.beta * a + rng.gumbel(size=a.shape), axis=1)
    # further draws from a stream of their own, so the world drawn below is the same for any oracle_draws
    more = np.random.default_rng([cfg.seed, 23]).gumbel(size=(cfg.n_ugc, cfg.oracle_draws - 1, m))
    oracle = np.column_stack([oracle, np.argmax(cfg.beta * a[:, None, :] + more, axis=2)])  # (N, oracle_draws)
    onehot = np.eye(g, dtype=bool)[genre]
    best = np.stack([np.where(onehot[:, j], a, -np.inf).max(axis=1) for j in range(g)], axis=1)
    vgenre = (best >= best.max(axis=1, keepdims=True) - cfg.genre_margin).astype(np.uint8)
    pgc_track = rng.permutation(np.resize(np.arange(m), cfg.n_pgc))
    pgc_props = np.clip(phi[pgc_track] + cfg.pgc_noise * rng.standard_normal((cfg.n_pgc, 5)), -1, 1)
    lo, hi = cfg.clip_seconds
    ugc_seconds, pgc_seconds = np.round(rng.uniform(lo, hi, cfg.n_ugc), 1), np.round(rng.uniform(lo, hi, cfg.n_pgc), 1)
    # the gate split: logged like val, from a stream of its own, so every other draw is the same with or without it
    gr = np.random.default_rng([cfg.seed, 24])
    g_up = gr.choice(cfg.n_uploaders, size=cfg.n_gate, p=activity / activity.sum()).astype(np.int64)
    g_props = np.clip(phi[gr.integers(m, size=cfg.n_gate)] + cfg.video_noise * gr.standard_normal((cfg.n_gate, 5)), -1, 1)
    g_logits = cfg.beta * relation.affinity(g_props, q, cfg.relation_map) + cfg.gamma * np.log(pref[g_up][:, genre])
    g_pick = np.argmax(g_logits + gr.gumbel(size=g_logits.shape), axis=1)
    return World(popularity=pop, uploader_pref=pref, ugc_props=props, ugc_uploader=uploader, ugc_mood=mood,
                 ugc_pick=pick, video_genre=vgenre, oracle_pick=oracle, pgc_track=pgc_track, pgc_props=pgc_props,
                 ugc_seconds=ugc_seconds, pgc_seconds=pgc_seconds, gate_props=g_props, gate_uploader=g_up, gate_pick=g_pick,
                 gate_seconds=np.round(gr.uniform(lo, hi, cfg.n_gate), 1))


# --------------------------------------------------------------------------- clips


def make_clips(cfg: CorpusConfig, specs: list[tuple[Path, np.ndarray, float, int]], workers: int) -> list[bool]:
    """Draw every clip (dest, visual vector, seconds, seed) with ffmpeg; returns which succeeded."""
    ok = [False] * len(specs)

    def one(k: int) -> None:
        dest, props, seconds, seed = specs[k]
        video.make_clip(dest, props, seconds, cfg.width, cfg.height, cfg.fps, seed)

    log.info("drawing %d clips with ffmpeg (%d at a time)", len(specs), workers)
    with ThreadPoolExecutor(max_workers=workers) as pool, logging_redirect_tqdm():
        futures = {pool.submit(one, k): k for k in range(len(specs))}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="encode clips", unit="clip"):
            k = futures[fut]
            try:
                fut.result()
                ok[k] = True
            except Exception as e:
                log.warning("clip %s failed, dropping it: %s", specs[k][0].name, e)
    return ok


# --------------------------------------------------------------------------- assembly


def build_corpus(dest: str | Path, size: str = "default", seed: int = 0, workers: int = 2, overwrite: bool = False,
                 **overrides: Any) -> tuple[Path, Timings]:
    """Make the demo corpus of ``size`` and write it atomically to ``dest``; returns the path and stage timings."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    cfg = replace(SIZES[size], seed=seed, **overrides)
    if cfg.oracle_draws < 1:
        raise ValueError(f"oracle_draws must be at least 1 (test_oracle picks per test clip), got {cfg.oracle_draws}")
    if cfg.n_tracks <= N_NEGATIVES:
        raise ValueError(f"the catalog needs more than {N_NEGATIVES} tracks, this size asks for {cfg.n_tracks}")
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists; pass --overwrite to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        return _build(cfg, size, dest, work, workers, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(cfg: CorpusConfig, size: str, dest: Path, work: Path, workers: int, overwrite: bool) -> tuple[Path, Timings]:
    tm = Timings()
    t_all = time.perf_counter()
    media = work / MEDIA
    tdir, udir, pdir = media / "tracks", media / "clips" / "ugc", media / "clips" / "pgc"
    for d in (tdir, udir, pdir):
        d.mkdir(parents=True)

    t0 = time.perf_counter()
    tracks: list[Any] = excerpt_catalog(cfg, tdir, workers) if cfg.catalog == "recorded" else render_catalog(cfg, tdir, workers)
    tm.render = time.perf_counter() - t0
    tm.detail["render_cpu_s"] = sum(t.render_s for t in tracks)
    tm.detail["audio_encode_cpu_s"] = sum(t.encode_s for t in tracks)

    t0 = time.perf_counter()
    mstore, kept = _extract("music", [tdir / t.audio for t in tracks], [f"track-{t.index:04d}" for t in tracks],
                            work / "features", workers)
    tm.detail["extract_music_s"] = time.perf_counter() - t0
    for k in set(range(len(tracks))) - set(kept):
        for name in (tracks[k].audio, getattr(tracks[k], "midi", None)):
            if name:
                (tdir / name).unlink(missing_ok=True)
    tracks = _renumber_tracks([tracks[k] for k in kept], tdir)
    if len(tracks) <= N_NEGATIVES:
        raise RuntimeError(f"only {len(tracks)} tracks survived rendering and extraction; the protocol needs {N_NEGATIVES + 1}")
    music_features = np.asarray(mstore.features, dtype=np.float32)

    genre = np.array([cfg.genres.index(t.genre) for t in tracks], dtype=np.int64)
    if cfg.catalog == "recorded":
        q = recorded.music_vector(*(np.array([getattr(t, f) for t in tracks]) for f in
                                    ("tempo_bpm", "mode_strength", "onsets_per_s", "rms_db", "centroid_hz")))
    else:
        q = relation.music_vector(*(np.array([getattr(t, f) for t in tracks]) for f in
                                    ("tempo_bpm", "mode", "onsets_per_s", "rms_db", "voices")))
    w = sample_world(cfg, q, genre)

    t0 = time.perf_counter()
    specs = [(udir / f"{i:05d}.mp4", w.ugc_props[i], float(w.ugc_seconds[i]), cfg.seed * 100_003 + i) for i in range(cfg.n_ugc)]
    specs += [(pdir / f"{i:05d}.mp4", w.pgc_props[i], float(w.pgc_seconds[i]), cfg.seed * 100_003 + 50_000 + i)
              for i in range(cfg.n_pgc)]
    specs += [(udir / f"{cfg.n_ugc + i:05d}.mp4", w.gate_props[i], float(w.gate_seconds[i]), cfg.seed * 100_003 + 80_000 + i)
              for i in range(cfg.n_gate)]
    made = make_clips(cfg, specs, workers)
    tm.encode = time.perf_counter() - t0

    t0 = time.perf_counter()
    todo = [k for k in range(len(specs)) if made[k]]
    vstore, vkept = _extract("videos", [specs[k][0] for k in todo], [specs[k][0].relative_to(media).as_posix() for k in todo],
                             work / "features", workers, fps=cfg.extract_fps, motion=cfg.video_motion)
    tm.detail["extract_video_s"] = time.perf_counter() - t0
    tm.extract = tm.detail["extract_music_s"] + tm.detail["extract_video_s"]
    good = np.zeros(len(specs), dtype=bool)
    good[[todo[k] for k in vkept]] = True
    vfeat = np.zeros((len(specs), np.asarray(vstore.features).shape[1]), dtype=np.float32)
    vfeat[[todo[k] for k in vkept]] = np.asarray(vstore.features, dtype=np.float32)
    for k in np.flatnonzero(~good):
        specs[k][0].unlink(missing_ok=True)

    t0 = time.perf_counter()
    path = _assemble(cfg, size, dest, work, tracks, genre, q, w, specs, good, vfeat, music_features, mstore, vstore, overwrite)
    tm.assemble = time.perf_counter() - t0
    tm.total = time.perf_counter() - t_all
    log.info("demo corpus (%s) in %.1f s: render %.1f, encode %.1f, extract %.1f, assemble %.1f",
             size, tm.total, tm.render, tm.encode, tm.extract, tm.assemble)
    return path, tm


def _assemble(cfg: CorpusConfig, size: str, dest: Path, work: Path, tracks: list[Any], genre: np.ndarray,
              q: np.ndarray, w: World, specs: list[tuple[Path, np.ndarray, float, int]], good: np.ndarray,
              vfeat: np.ndarray, music_features: np.ndarray, mstore: Any, vstore: Any, overwrite: bool) -> Path:
    """Rows, priors, weights, CSVs and manifest from what survived; written atomically to ``dest``."""
    rng = np.random.default_rng([cfg.seed, 33])
    media = work / MEDIA
    n = cfg.n_ugc
    g = len(cfg.genres)
    ugc_ok = np.flatnonzero(good[:n])  # surviving UGC clips, in draw order
    pgc_ok = np.flatnonzero(good[n:n + cfg.n_pgc])
    gate_ok = np.flatnonzero(good[n + cfg.n_pgc:])  # gate clips: video ids after every UGC clip
    n_test = int(round(cfg.test_fraction * len(ugc_ok)))
    n_val = int(round(cfg.val_fraction * len(ugc_ok)))
    n_train = len(ugc_ok) - n_val - n_test
    ids = np.arange(len(ugc_ok))  # new video id = position among surviving UGC clips
    tr, va, te = ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:]
    uploader = w.ugc_uploader[ugc_ok]
    pick = w.ugc_pick[ugc_ok]
    train = protocol.train_rows(tr, pick[tr], w.video_genre[ugc_ok][tr], genre, g, uploader=uploader[tr],
                                n_uploaders=cfg.n_uploaders, alpha=cfg.prior_smoothing)

    def rank_rows(rows: np.ndarray, positives: np.ndarray) -> RankRows:
        return protocol.rank_rows(rng, rows, positives, train, genre, g, uploader=uploader[rows],
                                  n_uploaders=cfg.n_uploaders, alpha=cfg.prior_smoothing)

    ugc = UGC(
        video_features=vfeat[ugc_ok], music_features=music_features,
        prior_mean=protocol.prior_mean(train.prior), music_genre=genre,
        music_norm_mean=mstore.norm_mean, music_norm_std=mstore.norm_std,
        train=train,
        val=rank_rows(va, pick[va]),
        test=rank_rows(te, pick[te]),
        test_oracle=rank_rows(np.repeat(te, cfg.oracle_draws), w.oracle_pick[ugc_ok][te].reshape(-1)),  # clip-major
    )
    if len(gate_ok):
        gate_ids = len(ugc_ok) + np.arange(len(gate_ok))
        ugc = replace(ugc, video_features=np.concatenate([vfeat[ugc_ok], vfeat[n + cfg.n_pgc + gate_ok]]),
                      gate=protocol.rank_rows(rng, gate_ids, w.gate_pick[gate_ok], train, genre, g,
                                              uploader=w.gate_uploader[gate_ok], n_uploaders=cfg.n_uploaders,
                                              alpha=cfg.prior_smoothing))
    n_pval = max(1, int(round(len(pgc_ok) * cfg.pgc_val_fraction)))
    seg = np.arange(len(pgc_ok))
    pgc_music = w.pgc_track[pgc_ok]
    pgc = PGC(segment_features=vfeat[n + pgc_ok], music_features=music_features,
              train=PairRows(segment=seg[n_pval:], music=pgc_music[n_pval:]),
              val=PairRows(segment=seg[:n_pval], music=pgc_music[:n_pval]))

    videos = []
    for kind, src, props, secs in (("ugc", ugc_ok, w.ugc_props, w.ugc_seconds), ("pgc", pgc_ok, w.pgc_props, w.pgc_seconds)):
        off = 0 if kind == "ugc" else n
        for new, k in enumerate(src):
            row: dict[str, Any] = {"id": new, "kind": kind, "path": specs[off + k][0].relative_to(work).as_posix(),
                                   "seconds": float(secs[k]), "uploader": int(w.ugc_uploader[k]) if kind == "ugc" else "",
                                   "track": int(w.pgc_track[k]) if kind == "pgc" else "",
                                   "mood_track": int(w.ugc_mood[k]) if kind == "ugc" else ""}
            row.update({p: round(float(props[k, j]), 4) for j, p in enumerate(relation.VISUAL_PROPERTIES)})
            videos.append(row)
    for new, k in enumerate(gate_ok, start=len(ugc_ok)):  # the gate split's clips: UGC clips with the ids after the rest
        row = {"id": new, "kind": "ugc", "path": specs[n + cfg.n_pgc + k][0].relative_to(work).as_posix(),
               "seconds": float(w.gate_seconds[k]), "uploader": int(w.gate_uploader[k]), "track": "", "mood_track": ""}
        row.update({p: round(float(w.gate_props[k, j]), 4) for j, p in enumerate(relation.VISUAL_PROPERTIES)})
        videos.append(row)
    tags = recorded.tags(q, [t.mode for t in tracks]) if cfg.catalog == "recorded" else [""] * len(tracks)
    track_rows = [{"id": t.index, "title": t.title, "artist": t.artist, "genre": t.genre, "source": t.source,
                   "licence": t.licence, "copyright": getattr(t, "copyright", ""), "tags": tag,
                   "path": f"{MEDIA}/tracks/{t.audio}"} for t, tag in zip(tracks, tags)]
    manifest = _manifest(cfg, size, tracks, q, w, mstore, vstore)
    return write_dataset(dest, manifest, ugc, pgc, tracks=track_rows, videos=videos, attach={MEDIA: media}, overwrite=overwrite)


RECORDED_DESCRIPTION = (
    "Recorded-music corpus made offline by deccm.data.corpus: real recordings from Debian's free game-soundtrack "
    "packages (one excerpt per track, licence per file from the package's copyright file), and real H.264 clips drawn "
    "with ffmpeg from visual-property vectors that have a planted relation to the excerpts' measured descriptors "
    "(tempo, mode, energy, brightness). Genre groups are the soundtracks (packages). Logged (UGC) choices carry an "
    "uploader soundtrack-preference confounder; test_oracle is drawn from the planted affinity alone; PGC clips are "
    "generated from their track. Features were extracted from the media files.")


def _manifest(cfg: CorpusConfig, size: str, tracks: list[Any], q: np.ndarray, w: World, mstore: Any,
              vstore: Any) -> dict[str, Any]:
    if cfg.catalog == "recorded":
        keys: tuple[str, ...] = ("package", "licence", "copyright", "licence_basis", "duration_s", "start_s", "excerpt_s",
                                 "tempo_bpm", "key", "mode", "mode_strength", "onsets_per_s", "rms_db", "centroid_hz")
    else:
        keys = ("ensemble", "programs", "duration_s", "velocity", "tempo_bpm", "beat_quarters", "key", "mode",
                "key_correlation", "onsets_per_s", "voices", "rms_db", "n_parts")
    music_spec = dict(mstore.spec)
    blocks = [b for b in music_spec.get("blocks", []) if "start" in b and "stop" in b]
    dims: dict[str, Any] = {}
    if blocks:
        dims["music_blocks"] = [{"name": b["name"], "dim": int(b["stop"]) - int(b["start"])} for b in blocks]
    recorded_ = cfg.catalog == "recorded"
    return {
        "name": f"{'recorded' if recorded_ else 'demo'}-corpus-{size}-seed{cfg.seed}",
        "provenance": "extracted",
        "description": RECORDED_DESCRIPTION if recorded_ else (
            "Demo corpus made offline by deccm.data.corpus: real audio rendered from public-domain music21 corpus "
            "scores through a General-MIDI soundfont, and real H.264 clips drawn with ffmpeg from visual-property "
            "vectors that have a planted relation to the tracks' measured musical properties. Logged (UGC) choices "
            "carry an uploader genre-preference confounder; test_oracle is drawn from the planted affinity alone; "
            "PGC clips are generated from their track. Features were extracted from the media files."),
        "genres": list(cfg.genres),
        "genre_descriptions": ({p.group: f"{p.title} (Debian package {p.name})" for p in recorded.PACKAGES} if recorded_
                               else dict(catalog.GENRE_DESCRIPTIONS)),
        "dims": dims,
        "features": {"video": dict(vstore.spec), "music": music_spec, "music_normalisation": mstore.normalisation},
        "generator": {"module": "deccm.data.corpus", "size": size,
                      **asdict(cfg)},
        "corpus": {
            "relation": relation.describe(recorded=recorded_),
            "genre_popularity": w.popularity.tolist(),
            "uploader_preference": np.round(w.uploader_pref, 6).tolist(),
            "tracks": {**{k: [getattr(t, k) for t in tracks] for k in keys},
                       "music_vector": np.round(q, 6).tolist()},
            "videos_csv": "id = row of ugc/video_features (kind ugc; the gate split's clips have the last ids) or "
                          "pgc/segment_features (kind pgc); "
                          "brightness..texture = the clip's visual-property vector; uploader (ugc); track = the track a "
                          "PGC clip was made from; mood_track = the track whose look a UGC clip was drawn around (hidden)",
            "media": (f"tracks: media/tracks/NNNN.mp3 (VBR MP3, 22.05 kHz mono, a {cfg.excerpt_seconds:g} s excerpt from a "
                      "third of the way into the recording: start_s, excerpt_s); " if recorded_ else
                      "tracks: media/tracks/NNNN.mp3 (VBR MP3, 22.05 kHz mono) + NNNN.mid (what was synthesised); ")
                     + f"clips: media/clips/{{ugc,pgc}}/NNNNN.mp4 (H.264 {cfg.width}x{cfg.height} @ {cfg.fps} fps, silent)",
            **({"packages": {p.name: p.title for p in recorded.PACKAGES}} if recorded_ else
               {"soundfont": "TimGM6mb.sf2 (General MIDI, shipped with pretty-midi)"}),
        },
        **protocol.NOTES,
    }


def default_dest(size: str) -> Path:
    """``$DECCM_HOME/data/demo`` (``demo-tiny`` for the tiny size, ``recorded`` and ``recorded-tiny`` as named)."""
    return config.data_dir("demo" if size == "default" else size if size.startswith("recorded") else f"demo-{size}")
