"""Serving: one scoring function, and the Recommender that turns a clip into ranked tracks.

A :class:`Ranker` turns video features into query vectors q and music features into track
vectors p; the score of a (video, track) pair is q · p (docs/method.md §6). Validation,
``deccm.evaluate``, the registry's model and the demo all score through it, so a ranking is
the same wherever it is computed.

:class:`Recommender` is a trained run made ready to serve: the model, the video extractor
rebuilt from the run's recorded spec, the catalog's track vectors computed once, and the
track rows (title, artist, genre, licence, copyright, audio file). A serving bundle
(:meth:`Recommender.save_bundle`) stores each track's audio by content hash and checks it when
loaded. ``deccm recommend RUN CLIP`` prints its ranking.

Serving only suggests tracks the person may use: a licence filter (``deccm.data.licences.FILTERS``,
default ``any`` = every known licence) masks the catalog before ranking, so a track of unknown
licence is never served unless ``include-unknown`` asks for it. Evaluation scores through
:class:`Ranker` and never filters. Nothing here imports training code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deccm import config, safeio
from deccm import logsetup as _log
from deccm.data import Dataset, DatasetError, load_dataset
from deccm.data.format import MANIFEST, TRACKS_CSV, read_csv
from deccm.data.licences import FAMILIES, FILTERS, INCLUDE_UNKNOWN, allowed, attribution, check_filter, family
from deccm.index import INDEXES, ExactIndex, Index, build_index, check_kind
from deccm.moments import MomentError, Moments, WindowSpec, clock
from deccm.runs import BEST, CONFIG, RunConfig, RunError, check_data, load_for_inference, run_dir_of

log = logging.getLogger(__name__)
BATCH = 4096


@dataclass
class Ranker:
    """Score = video_vectors(x_v) · music_vectors(x_m)ᵀ, batched, numpy in and out."""

    name: str
    video_fn: Callable[[torch.Tensor], torch.Tensor]
    music_fn: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)
    run: RunConfig | None = None  # the run it was loaded from (None for popularity and ad-hoc rankers)
    run_dir: Path | None = None

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
        """Top-k track ids and scores for query vectors q (N, D) against catalog vectors (M, D), exactly."""
        return ExactIndex(catalog).search(q, min(k, catalog.shape[0]))


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
    """A ranker from a run directory (or a checkpoint file in one) written by ``deccm.train``."""
    dev = config.resolve_device(device)
    model, conf = load_for_inference(path, device=dev)
    return Ranker(conf.name, model.video_embed, model.music_embed, dev, info=conf.to_dict(), run=conf,
                  run_dir=run_dir_of(Path(path)))


# --------------------------------------------------------------------------- the recommender


@dataclass(frozen=True)
class Suggestion:
    """One ranked track, with what a person needs to see and hear it."""

    rank: int  # 1-based
    track: int  # row of the catalog (dataset track id)
    title: str
    artist: str
    genre: str
    score: float
    audio: str | None  # absolute path of the audio file, when the catalog has media
    licence: str  # as the catalog states it ("" when unknown)
    licence_family: str  # deccm.data.licences.FAMILIES
    attribution: str  # the one-line credit to show with the track
    tags: str = ""  # measured descriptors in words ("fast · minor · energetic · bright"), where the catalog has them
    moment: dict[str, Any] | None = None  # deccm.moments.Moment.to_dict(): start, end, beats … (track time, s), when asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Catalog:
    """The tracks a model ranks: its vectors for them (computed once) and what a person sees and hears."""

    vectors: np.ndarray  # (M, D') the model's track vectors
    tracks: list[dict[str, str]]  # per track id: title, artist, genre, licence, copyright ("" = unknown), tags, audio
    #                               (absolute path or ""), sha256 (from a bundle)
    genres: list[str]
    source: dict[str, Any]  # the dataset it came from: name, manifest_hash, path
    index: str = "exact"  # how queries are answered: deccm.index.INDEXES (ivf is approximate, for large catalogs)
    audio_root: Path | None = None  # the bundle's content-addressed audio folder; None: the dataset's media folder
    moments: Moments | None = None  # per-track analyses for moments (deccm.moments); built on first need when absent
    _search: Index | None = field(default=None, init=False, repr=False, compare=False)
    _filtered: dict[str, Index] = field(default_factory=dict, init=False, repr=False, compare=False)  # per licence filter
    _servable: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def use_index(self, kind: str) -> "Catalog":
        """Answer queries with index ``kind`` (deccm.index.INDEXES) from now on; checked here, built on first query."""
        self.index, self._search, self._filtered = check_kind(kind), None, {}
        return self

    def search(self, q: np.ndarray, k: int, licence: str = "any") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) of query vectors q (N, D') among the tracks licence filter ``licence`` allows.

        The filter masks the catalog before ranking (an index over the allowed tracks only, built
        on first use), so k tracks come back whenever k are allowed.
        """
        ids = self.servable(licence)
        if len(ids) == len(self.vectors):
            if self._search is None:
                self._search = build_index(self.vectors, self.index)
            return self._search.search(q, min(k, len(ids)))
        if licence not in self._filtered:
            self._filtered[licence] = build_index(self.vectors[ids], self.index)
        sub, scores = self._filtered[licence].search(q, min(k, len(ids)))
        return ids[sub], scores

    def servable(self, licence: str = "any") -> np.ndarray:
        """Ids of the tracks licence filter ``licence`` (deccm.data.licences.FILTERS) allows, ascending.

        Raises ValueError naming the fix when it allows none: a catalog without known licences
        (data assembled without a licence column, legacy imports) is served only on request.
        """
        if check_filter(licence) not in self._servable:
            ids = np.array([i for i, t in enumerate(self.tracks) if allowed(t.get("licence"), licence)], dtype=np.int64)
            if len(ids) == 0:
                counts = self.licence_counts()["families"]
                if counts["unknown"] == len(self.tracks):
                    raise ValueError(
                        f"none of the catalog's {len(self.tracks)} tracks has a known licence, and a track of unknown licence "
                        f"is never served unless asked for. Fix: give tracks.csv a licence column and assemble the data again, "
                        f"or ask for licence filter {INCLUDE_UNKNOWN!r} (`deccm recommend --licence {INCLUDE_UNKNOWN}`: "
                        f"{FILTERS[INCLUDE_UNKNOWN]}).")
                have = ", ".join(f"{f} {n}" for f, n in counts.items() if n)
                raise ValueError(f"no track of the catalog is allowed by licence filter {licence!r} ({FILTERS[licence]}); "
                                 f"its tracks by licence family: {have}. Fix: choose a filter that allows some "
                                 f"(one of {', '.join(FILTERS)}).")
            self._servable[licence] = ids
        return self._servable[licence]

    def licence_counts(self) -> dict[str, dict[str, int]]:
        """Tracks per licence family (every one of deccm.data.licences.FAMILIES) and per licence as written, most first."""
        families = Counter(family(t.get("licence")) for t in self.tracks)
        names = Counter(" ".join((t.get("licence") or "").split()) or "unknown" for t in self.tracks)
        return {"families": {f: families[f] for f in FAMILIES}, "licences": dict(names.most_common())}

    @classmethod
    def from_dataset(cls, ds: Dataset, ranker: Ranker) -> "Catalog":
        genre = ds.ugc.music_genre
        rows = _rows_by_id(ds.tracks)
        tracks = []
        for t in range(ds.n_tracks):
            row = rows.get(t, {})
            g = int(genre[t]) if genre is not None else -1
            path = row.get("path") or ""
            tracks.append({"title": row.get("title") or f"track {t}", "artist": row.get("artist") or "",
                           "genre": ds.genres[g] if 0 <= g < ds.n_genres else (row.get("genre") or ""),
                           "licence": row.get("licence") or "", "copyright": row.get("copyright") or "",
                           "tags": row.get("tags") or "", "audio": str((ds.root / path).resolve()) if path else ""})
        return cls(ranker.music_vectors(ds.ugc.music_features), tracks, ds.genres,
                   {"name": ds.manifest.get("name"), "manifest_hash": ds.manifest_hash, "path": str(ds.root.resolve())})

    def save(self, dest: Path) -> None:
        """Vectors, track rows and each track's audio, stored by content (``audio/<sha256>.<ext>``).

        A bundle must keep playing the bytes it was trained with after a data drop rewrites the
        dataset's media folder under the same names (docs/architecture.md, "Serving bundles").
        """
        safeio.save_npy(dest / "vectors.npy", self.vectors.astype(np.float32))
        tracks = [{**t, **self._store_audio(i, t, dest / AUDIO_DIR)} for i, t in enumerate(self.tracks)]
        safeio.write_json(dest / "catalog.json", {"genres": self.genres, "source": self.source, "tracks": tracks})
        if self.has_media():
            try:
                self.with_moments().save(dest / MOMENTS_DIR)
            except MomentError as e:  # moments are an extra: a catalog whose audio cannot be analysed still serves
                log.warning("%s: saved without moments (%s); its tracks play from their start", dest, e)

    def has_media(self) -> bool:
        """Whether the tracks have audio files (a synthetic catalog has none, so no moments either)."""
        return sum(bool(t.get("audio")) for t in self.tracks) >= 2

    def with_moments(self, spec: WindowSpec | None = None) -> Moments:
        """The catalog's moments under ``spec`` (default: the loaded ones, else :class:`deccm.moments.WindowSpec`'s
        defaults), analysing each track's audio once (cached by content under ``$DECCM_HOME/cache/moments``)."""
        if self.moments is None or (spec is not None and spec != self.moments.spec):
            audio = [(t.get("audio") or "", t.get("sha256") or "") for t in self.tracks]
            self.moments = Moments.build(audio, self.vectors, spec or WindowSpec())
        return self.moments

    @staticmethod
    def _store_audio(i: int, track: dict[str, str], folder: Path) -> dict[str, str]:
        """Copy one track's audio into ``folder`` under its sha256; the row's new ``audio`` and ``sha256``."""
        src = track.get("audio") or ""
        if not src:
            return {"audio": "", "sha256": ""}
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise RunError(f"track {i} ({track.get('title')!r}): cannot read its audio {src} ({e.strerror}). "
                           "Fix: restore the dataset's media folder, or export from a run whose data is complete.") from None
        sha = hashlib.sha256(data).hexdigest()
        name = f"{sha}{_audio_suffix(src)}"
        if not (folder / name).is_file():  # tracks that share bytes share one file
            safeio.write_bytes(folder / name, data)
        return {"audio": f"{AUDIO_DIR}/{name}", "sha256": sha}

    @classmethod
    def load(cls, src: Path) -> "Catalog":
        """The catalog of a bundle, its audio checked against the recorded sha256 (a damaged bundle never plays)."""
        meta = json.loads((src / "catalog.json").read_text())
        vectors = safeio.load_npy(src / "vectors.npy")
        if vectors.shape[0] != len(meta["tracks"]):
            raise RunError(f"{src}: {vectors.shape[0]} track vectors for {len(meta['tracks'])} tracks. Fix: export the bundle again.")
        tracks = meta["tracks"]
        moments = _moments_of(src / MOMENTS_DIR)
        if any("licence" not in t for t in tracks):
            tracks = _licences_from_source(src, meta["source"], tracks)
        if any("sha256" not in t for t in tracks):
            log.warning("%s: a bundle from before content-hashed audio; its tracks play whatever the dataset's media folder "
                        "holds now, which a later data drop may have replaced. Fix: register the run again.", src)
            return cls(vectors, tracks, meta["genres"], meta["source"])
        return cls(vectors, [_checked_audio(src, i, t) for i, t in enumerate(tracks)], meta["genres"], meta["source"],
                   audio_root=(src / AUDIO_DIR).resolve(), moments=moments)

    def genre_mix(self) -> dict[str, float]:
        """Share of each genre in the whole catalog (what a suggestion list is compared with)."""
        names = [t["genre"] for t in self.tracks]
        return {g: names.count(g) / len(names) for g in self.genres}


class Recommender:
    """A trained run ready to rank clips against its catalog; build with :meth:`from_run` or :meth:`from_bundle`."""

    def __init__(self, ranker: Ranker, catalog: Catalog, extractor: Any | None = None):
        if ranker.run is None:
            raise RunError("a Recommender needs a trained run's ranker")
        self.ranker = ranker
        self.run: RunConfig = ranker.run
        self.catalog = catalog
        self.extractor = extractor  # VideoExtractor rebuilt from the run's spec, or None (features only)
        self.card: dict[str, Any] = {}  # the model card, when served from a registered bundle

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", extractor: bool = True, index: str = "exact") -> "Recommender":
        """Load the run's best weights, its catalog (the training data's tracks) and its video extractor.

        The extractor is rebuilt from the spec recorded in the data the run was trained on
        and refuses other weights or settings; data without a spec (synthetic) serves
        precomputed features only.
        """
        ranker = load_ranker(run, device)
        assert ranker.run is not None
        ds = load_dataset(ranker.run.data_path)
        check_data(ranker.run, ds, str(run))
        catalog = Catalog.from_dataset(ds, ranker).use_index(index)
        return cls(ranker, catalog, _extractor(ranker.run, device) if extractor else None)

    def save_bundle(self, dest: str | Path) -> Path:
        """Everything serving needs, in one directory: ``run/`` (config + best weights), ``catalog/`` (vectors, track
        rows, ``audio/<sha256>.<ext>``), ``card.json``.

        Written atomically; :meth:`from_bundle` serves it without the training data, and its tracks play the
        bytes they had at export whatever later happens to the dataset.
        """
        run_dir = self.ranker.run_dir
        assert run_dir is not None
        with safeio.atomic_dir(dest, overwrite=True) as tmp:
            (tmp / "run").mkdir()
            for name in (CONFIG, BEST):
                shutil.copy2(run_dir / name, tmp / "run" / name)
            (tmp / "catalog").mkdir()
            self.catalog.save(tmp / "catalog")
        return Path(dest)

    @classmethod
    def from_bundle(cls, bundle: str | Path, device: str = "auto", extractor: bool = True, index: str = "exact") -> "Recommender":
        """Serve a bundle written by :meth:`save_bundle` (e.g. a registered model's artifacts)."""
        bundle = Path(bundle)
        if not (bundle / "run" / CONFIG).is_file() or not (bundle / "catalog" / "catalog.json").is_file():
            raise RunError(f"{bundle}: not a deccm serving bundle (needs run/{CONFIG} and catalog/catalog.json). "
                           "Fix: export it with Recommender.save_bundle or register the run again.")
        ranker = load_ranker(bundle / "run", device)
        assert ranker.run is not None
        catalog = Catalog.load(bundle / "catalog").use_index(index)
        want = ranker.music_vectors(np.zeros((1, ranker.run.model.music_dim), np.float32)).shape[1]
        if catalog.vectors.shape[1] != want:
            raise RunError(f"{bundle}: catalog vectors have {catalog.vectors.shape[1]} columns, the model makes {want}. "
                           "Fix: export the bundle again from its run.")
        rec = cls(ranker, catalog, _extractor(ranker.run, device) if extractor else None)
        if (bundle / "card.json").is_file():
            rec.card = json.loads((bundle / "card.json").read_text())
        return rec

    @property
    def name(self) -> str:
        return self.ranker.name

    def video_features(self, video: str | Path) -> np.ndarray:
        """(1, D_v) features of one clip, extracted exactly as the training clips were.

        Raises ``deccm.features.DecodeError`` (with the file and what is wrong) for unusable files.
        """
        if self.extractor is None:
            raise RunError(f"{self.name}: its data records no video extractor (synthetic features), so it can only rank "
                           "precomputed feature vectors. Fix: pass a (D_v,) or (N, D_v) array.")
        from deccm.features import DecodeError

        try:
            return self.extractor.extract(video)[None, :]
        except DecodeError as e:
            raise DecodeError(f"{video}: {e}") from None

    def query(self, x_v: np.ndarray) -> np.ndarray:
        """(N, D') query vectors for video features (N, D_v) or (D_v,), checked."""
        x = np.atleast_2d(np.asarray(x_v, dtype=np.float32))
        want = self.run.model.video_dim
        if x.shape[1] != want or not np.isfinite(x).all():
            raise ValueError(f"video features must be finite with {want} columns, got shape {x.shape}")
        return self.ranker.video_vectors(x)

    def rank_features(self, x_v: np.ndarray, k: int = 10, licence: str = "any") -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores), each (N, k), for video features (N, D_v) or (D_v,), among the tracks licence filter
        ``licence`` allows (deccm.data.licences.FILTERS; fewer than k only when fewer are allowed)."""
        return self._search(self.query(x_v), k, licence)

    def _search(self, q: np.ndarray, k: int, licence: str) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return self.catalog.search(q, k, licence)

    def recommend(self, video: str | Path | np.ndarray, k: int = 10, licence: str = "any",
                  moment_s: float | None = None) -> list[Suggestion]:
        """The top-k tracks for one clip (a media file path, or its precomputed (D_v,) features) whose licence
        filter ``licence`` allows (default: every known licence).

        With ``moment_s`` (the clip's length in seconds) each suggestion also carries its moment: the
        part of the track to play under the clip, cut on the beat to that length (deccm.moments).
        """
        self.catalog.servable(licence)  # a filter that allows nothing fails before the clip is decoded
        if moment_s is not None and not (np.isfinite(moment_s) and moment_s > 0):
            raise ValueError(f"a moment needs the clip's length in seconds (> 0), got {moment_s}")
        moments = self.catalog.with_moments() if moment_s is not None else None
        x = self.video_features(video) if isinstance(video, (str, Path)) else np.asarray(video, dtype=np.float32)
        if x.ndim == 2 and x.shape[0] != 1:
            raise ValueError(f"recommend takes one clip; got {x.shape[0]} feature rows (use rank_features for batches)")
        q = self.query(x)
        ids, scores = self._search(q, k, licence)
        out = []
        for i, (t, s) in enumerate(zip(ids[0], scores[0])):
            m = None
            if moments is not None and moments.analyses[int(t)] is not None:
                m = moments.moment(int(t), q[0], float(moment_s)).to_dict()  # type: ignore[arg-type]
            out.append(self.suggestion(i + 1, int(t), float(s), m))
        return out

    def suggestion(self, rank: int, track: int, score: float, moment: dict[str, Any] | None = None) -> Suggestion:
        row = self.catalog.tracks[track]
        licence = row.get("licence") or ""
        return Suggestion(rank=rank, track=track, title=row["title"], artist=row["artist"], genre=row["genre"], score=score,
                          audio=row["audio"] or None, licence=licence, licence_family=family(licence),
                          attribution=attribution(row["title"], row["artist"], licence, row.get("copyright") or ""),
                          tags=row.get("tags") or "", moment=moment)


AUDIO_DIR = "audio"  # a bundle catalog's audio files, named by content: <sha256>.<ext>
MOMENTS_DIR = "moments"  # a bundle catalog's moment analyses and window spec (deccm.moments.Moments.save)
_STORED = re.compile(rf"^{AUDIO_DIR}/([0-9a-f]{{64}})(\.[A-Za-z0-9]{{1,8}})?$")


def _moments_of(src: Path) -> Moments | None:
    """A bundle's moments, or None when it has none or they were made by another version of the analysis (they are
    then analysed again when first needed, from the bundle's own audio)."""
    if not (src / "spec.json").is_file():
        return None
    try:
        return Moments.load(src)
    except (MomentError, OSError, ValueError, KeyError) as e:
        log.warning("%s: moments not used (%s); the tracks are analysed again when first needed", src, e)
        return None


def _rows_by_id(rows: list[dict[str, str]]) -> dict[int, dict[str, str]]:
    """``tracks.csv`` rows by their integer track id (rows without one are skipped)."""
    return {int(r["id"]): r for r in rows if str(r.get("id", "")).lstrip("-").isdigit()}


def _licences_from_source(src: Path, source: dict[str, Any], tracks: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows of a bundle registered before licences were carried, with each track's licence and copyright read from
    the dataset it was made from while that dataset is unchanged (the same manifest); unknown otherwise."""
    root = Path(source["path"]) if source.get("path") else None
    try:
        same = root is not None and hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest() == source.get("manifest_hash")
    except OSError:
        same = False
    rows = _rows_by_id(read_csv(root / TRACKS_CSV)) if same and root else {}
    if not same:
        log.warning("%s: a bundle from before licences, and the dataset it was made from (%s) is gone or changed, so its "
                    "tracks' licences are unknown and serving refuses them by default. Fix: register the run again.",
                    src, root)
    return [{**t, "licence": rows.get(i, {}).get("licence") or "", "copyright": rows.get(i, {}).get("copyright") or ""}
            for i, t in enumerate(tracks)]


def _audio_suffix(path: str) -> str:
    """The file's extension when it is a plain one (players and the media rule look at it), else none."""
    suffix = Path(path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def _checked_audio(src: Path, i: int, track: dict[str, str]) -> dict[str, str]:
    """A bundle row with ``audio`` made absolute, after checking that the stored file holds the recorded bytes."""
    if not track.get("audio"):
        return {**track, "audio": ""}
    m = _STORED.match(track["audio"])
    fix = "Fix: download the registered version again, or register its run again to rebuild the bundle."
    if m is None or m.group(1) != track.get("sha256"):
        raise RunError(f"{src}: track {i} ({track.get('title')!r}) names audio {track['audio']!r}, not "
                       f"{AUDIO_DIR}/<its sha256>.<ext>. {fix}")
    path = src / track["audio"]
    try:
        got = safeio.sha256_file(path)
    except OSError:
        raise RunError(f"{src}: track {i} ({track.get('title')!r}): its audio {path} is missing. {fix}") from None
    if got != track["sha256"]:
        raise RunError(f"{src}: track {i} ({track.get('title')!r}): {path} has sha256 {got[:12]}…, the catalog records "
                       f"{track['sha256'][:12]}…: the bundle is damaged. {fix}")
    return {**track, "audio": str(path.resolve())}


def _extractor(conf: RunConfig, device: str) -> Any | None:
    """The video extractor a run's data was made with, rebuilt from its recorded spec (None for synthetic features)."""
    spec = (conf.data.get("features") or {}).get("video")
    if spec is None:
        return None
    from deccm.features import SpecMismatch, VideoExtractor, WeightsError

    try:
        return VideoExtractor.from_spec(spec, device=device)
    except (SpecMismatch, WeightsError, ValueError) as e:
        raise RunError(f"{conf.name}: cannot rebuild the video extractor the run was trained with ({e}).") from e


def clip_seconds(clip: str | Path, cap: float | None = None) -> float:
    """The clip's length as its container states it (after the media rule's checks), capped at ``cap``: the length a
    moment is cut to."""
    from deccm.features import DecodeError, admit

    info = admit.check(clip, "video", admit.UPLOAD)
    if not info.duration:
        raise DecodeError(f"{Path(clip).name}: its container states no duration, so no moment length. Fix: remux it "
                          "(ffmpeg -i in -c copy out.mp4).")
    return min(info.duration, cap) if cap else info.duration


def format_suggestions(items: list[Suggestion]) -> str:
    """A plain table: rank, score, genre, title, artist, licence (cut at 40 characters; ``--json`` has it whole), and
    the tags where the catalog has them."""
    tagged = any(s.tags for s in items)
    timed = any(s.moment for s in items)
    head = ("rank", "score", "genre", "title", "artist", "licence") + (("tags",) if tagged else ()) \
        + (("start", "end", "cut") if timed else ())
    rows = [(str(s.rank), f"{s.score:.4f}", s.genre, s.title, s.artist, _cut(s.licence or "unknown", 40))
            + ((s.tags,) if tagged else ()) + (_moment_cells(s.moment) if timed else ()) for s in items]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def _moment_cells(m: dict[str, Any] | None) -> tuple[str, str, str]:
    """start, end (m:ss.s, track time) and how the cut was made ("downbeat", "beat", "loop …", "none")."""
    if not m:
        return ("", "", "no audio")
    how = f"loop {m['snapped']}" if m["loop"] else m["snapped"]
    return (clock(m["start"]), clock(m["end"]), how)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


# --------------------------------------------------------------------------- CLI


def build_parser(prog: str = "deccm recommend") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Rank a run's music catalog for a video clip.")
    p.add_argument("run", type=Path, help="run dir written by `python -m deccm.train` (its best epoch is used)")
    p.add_argument("clip", type=Path, help="video file (mp4, mov, webm, ...) to suggest music for")
    p.add_argument("--k", type=int, default=10, help="how many tracks (default 10)")
    p.add_argument("--licence", choices=list(FILTERS), default="any",
                   help="serve only tracks of these licences: " + "; ".join(f"{k}: {v}" for k, v in FILTERS.items())
                   + " (default any)")
    p.add_argument("--moments", action="store_true",
                   help="also give each track's moment: the part to play under the clip, cut on the beat to the clip's "
                        "length (start and end in the table; start, end, beats in --json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default auto)")
    p.add_argument("--index", choices=INDEXES, default="exact",
                   help="exact (default) scores every track; ivf (faiss-cpu, approximate) is for catalogs of 100k+ tracks")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None, prog: str = "deccm recommend") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    from deccm.features import DecodeError

    try:
        rec = Recommender.from_run(args.run, device=args.device, index=args.index)
        length = clip_seconds(args.clip) if args.moments else None
        items = rec.recommend(args.clip, k=args.k, licence=args.licence, moment_s=length)
    except (RunError, DatasetError, DecodeError, ValueError) as e:  # ValueError covers SearchError and MomentError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"run": str(args.run), "clip": str(args.clip), "model": rec.name, "licence_filter": args.licence,
                          "synthetic": rec.run.synthetic if rec.run else None,
                          "suggestions": [s.to_dict() for s in items]}, indent=2))
    else:
        if rec.run is not None and rec.run.synthetic:
            print(f"[model {rec.name} was trained on SYNTHETIC data]")
        print(format_suggestions(items))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.serve"))
