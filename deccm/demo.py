"""The demo's logic: rank music for an admitted upload, explain the model, serve the page.

``demo/app.py`` only builds the Gradio page and wires its events to this module, so
everything a person sees is computed (and tested) here. What an upload may be, and the
trimmed clip and preview made from it, are :mod:`deccm.upload` (``check_upload``, ``preview``).

- :func:`suggest`: the ranked :class:`deccm.serve.Suggestion` list of a
  :class:`deccm.serve.Recommender` (the same ranking as ``Recommender.recommend``), with
  timings, notes and the suggestions' genre mix beside the catalog's. A licence filter
  (:data:`deccm.data.licences.FILTERS`, default ``any``: every known licence, never an
  unknown one) is applied by the recommender before ranking, so K tracks still come back
  when the catalog has them; every suggestion carries its licence and attribution.
- the model card in words is :func:`deccm.card.card_markdown` (also the registered
  version's description).
- :func:`comparison_model`: the registered model shown beside the champion: the
  ``baseline`` that ``make demo`` registers (``deccm.pipeline.ensure_baseline``), else an
  earlier version.
- :class:`DemoService`: the served model (:class:`ServedModel`: the champion, followed
  through the registry by :class:`deccm.watch.ChampionWatcher` and swapped between requests,
  its comparison model, the audio and examples it may serve), :meth:`DemoService.health`
  for ``GET /healthz``, and one call per page event. Each event runs its cheap checks first, then takes one of :data:`HEAVY_SLOTS`
  slots (shared by suggestions and previews) for the decoding, ranking or encoding, under a
  deadline (docs/architecture.md, "Media admission").
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from deccm import safeio
from deccm.card import card_markdown, data_kind, data_warning
from deccm.data import licences
from deccm.data.format import MEDIA_DIR, VIDEOS_CSV, read_csv
from deccm.features import admit
from deccm.features.admit import DecodeError
from deccm.upload import LIMITS, MAX_BYTES, MAX_SECONDS, DemoError, check_upload, first_seconds, preview
from deccm.moments import MomentError, clock, load_samples, render, write_wav
from deccm.moments import Moment as _Moment
from deccm.serve import Recommender, Suggestion

log = logging.getLogger(__name__)

TOP_AUDIO = 5  # tracks with a player on the page
HEAVY_SLOTS = 2  # decodes, rankings and preview encodes at once, in all (two cores)
SLOT_WAIT_S = 60.0  # a request that waits longer for a slot is told the demo is busy
REQUEST_BUDGET_S = 4.0  # decoding time of one request once it holds a slot
PREVIEW_KEEP_S = 3600.0  # previews older than this are deleted
DEFAULT_LICENCE = "any"  # every known licence; a track of unknown licence only with the explicit "include-unknown"


# --------------------------------------------------------------------------- suggestions


@dataclass
class SuggestResult:
    """What the page shows for one clip."""

    clip: str  # file name as uploaded
    model: str  # e.g. "deccm-student v3" or the run name
    k: int
    suggestions: list[Suggestion]
    timings: dict[str, float]  # seconds: check, features, rank, total
    notes: list[str]
    genre_mix: list[dict[str, Any]]  # per catalog genre: genre, suggestions (share of the top k), catalog (share)
    licence: str = DEFAULT_LICENCE  # the licence filter applied (a key of licences.FILTERS); a comparison model uses it too
    features: np.ndarray | None = field(default=None, repr=False)  # (1, D_v), reused by a comparison model

    def to_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "model": self.model, "k": self.k, "licence_filter": self.licence,
                "suggestions": [s.to_dict() for s in self.suggestions], "timings": self.timings, "notes": self.notes,
                "genre_mix": self.genre_mix}


def model_label(rec: Recommender) -> str:
    reg = rec.card.get("registry") or {}
    if reg.get("version"):
        aliases = f" ({', '.join(reg['aliases'])})" if reg.get("aliases") else ""
        return f"{reg.get('name', 'deccm-student')} v{reg['version']}{aliases}"
    return rec.name


def genre_mix(rec: Recommender, items: list[Suggestion]) -> list[dict[str, Any]]:
    """Per catalog genre: its share among the suggestions and in the whole catalog."""
    catalog = rec.catalog.genre_mix()
    n = max(1, len(items))
    return [{"genre": g, "suggestions": sum(s.genre == g for s in items) / n, "catalog": share} for g, share in catalog.items()]


class RecentClips:
    """Video features of recently ranked clips by content: a clip sent again (another K, a popular example, the
    same upload twice) is not decoded again and takes no slot. Keyed by the extractor's spec, the clip's sha256
    and the part of it in use; at most ``size`` entries, least recently used first out."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, tuple[np.ndarray, list[str]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[np.ndarray, list[str]] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: str, value: tuple[np.ndarray, list[str]]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def check_licence(licence: str | None) -> str:
    """The licence filter by name (a key of :data:`deccm.data.licences.FILTERS`; None or '' is the default), or a
    :class:`DemoError` listing the filters: a client of the API may send any string."""
    name = DEFAULT_LICENCE if licence in (None, "") else str(licence)
    if name not in licences.FILTERS:
        raise DemoError(f"unknown licence filter {name!r}: choose one of {', '.join(licences.FILTERS)}")
    return name


def allowed_tracks(rec: Recommender, licence: str) -> int:
    """How many of ``rec``'s tracks the licence filter allows; a :class:`DemoError` in the catalog's own words (its
    tracks per licence family, and the fix) when it allows none."""
    try:
        return len(rec.catalog.servable(licence))
    except ValueError as e:
        raise DemoError(str(e)) from None


def suggest(rec: Recommender, video_path: str | os.PathLike | None, k: int = 10, *, licence: str = DEFAULT_LICENCE,
            max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS,
            slot: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
            recent: RecentClips | None = None) -> SuggestResult:
    """The top-``k`` tracks for an uploaded clip: exactly ``rec.recommend(video_path, k, licence)`` for a clip within
    the limits.

    ``licence`` names a filter of :data:`deccm.data.licences.FILTERS`; the recommender drops
    the tracks it refuses before ranking, so ``k`` tracks come back while the catalog allows
    that many (fewer, and a note, otherwise; a filter that allows none is a
    :class:`DemoError`, before any decoding). The default ``any`` never serves a track whose
    licence is unknown.

    The cheap checks (:func:`check_upload`) run first; the decoding and ranking then run
    inside ``slot()`` (a :class:`DemoService` passes one of its shared slots) and under a
    deadline of :data:`REQUEST_BUDGET_S`, unless ``recent`` already holds the clip's
    features. A clip longer than ``max_seconds`` is ranked on
    its first ``max_seconds`` (or the extractor's own cap if that is shorter) and the notes
    say so. Unusable clips raise :class:`DemoError`.
    """
    t0 = time.perf_counter()
    if rec.extractor is None:
        raise DemoError(f"the model {model_label(rec)} was trained on SYNTHETIC feature vectors, so it has no video "
                        "extractor and cannot rank an uploaded clip. Register a model trained on media (the demo corpus "
                        "or your own clips) to try it on videos.")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise DemoError(f"k must be a whole number, got {k!r}") from None
    if k < 1:
        raise DemoError(f"k must be at least 1, got {k}")
    licence = check_licence(licence)
    allowed = allowed_tracks(rec, licence)
    licence_note = (f"only {allowed} tracks of the catalog pass the licence filter '{licence}'"
                    if k > allowed and allowed < len(rec.catalog.tracks) else None)
    k = min(k, allowed)
    limit = min(float(max_seconds), float(rec.extractor.max_seconds))
    up = check_upload(video_path, max_bytes=max_bytes, max_seconds=limit)
    notes = list(up.notes) + ([licence_note] if licence_note else [])
    key = f"{rec.extractor.spec['spec_id']}:{safeio.sha256_file(up.path)}:{limit:g}" if recent is not None else ""
    known = recent.get(key) if recent is not None else None
    with contextlib.nullcontext() if known else slot():
        t1 = time.perf_counter()
        if known is None:
            try:
                with admit.budget(REQUEST_BUDGET_S), tempfile.TemporaryDirectory(prefix="deccm-demo-") as tmp:
                    clip = up.path
                    cut = up.used_seconds if up.used_seconds is not None else limit
                    if up.capped and cut < rec.extractor.max_seconds:
                        clip = first_seconds(up, cut, Path(tmp))
                    known = rec.extractor.extract_with_notes(clip)
            except DecodeError as e:
                raise DemoError(f"{up.name} is not a usable video: {e}. Upload a video file (mp4, mov, webm …).") from None
            if recent is not None:
                recent.put(key, known)
        feats, decoder_notes = known
        notes += [n for n in decoder_notes if not n.startswith("capped:") and n not in notes]
        x = feats[None, :]
        t2 = time.perf_counter()
        moment_s = up.used_seconds if rec.catalog.has_media() else None  # the part ranked: the moment fills it
        if moment_s is None and rec.catalog.has_media():
            notes.append("the clip does not state its length, so no moment can be fitted to it: each track plays from its start")
        try:
            items = rec.recommend(x, k=k, licence=licence, moment_s=moment_s)
        except MomentError as e:
            notes.append(f"no moments for this catalog ({e}): each track plays from its start")
            items = rec.recommend(x, k=k, licence=licence)
        t3 = time.perf_counter()
    return SuggestResult(clip=up.name, model=model_label(rec), k=k, suggestions=items,
                         timings={"check": t1 - t0, "features": t2 - t1, "rank": t3 - t2, "total": t3 - t0},
                         notes=notes, genre_mix=genre_mix(rec, items), licence=licence, features=x)


def rank_like(other: Recommender, result: SuggestResult, video_path: str | os.PathLike,
              max_seconds: float = MAX_SECONDS,
              slot: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
              recent: RecentClips | None = None) -> list[Suggestion]:
    """``other``'s top-k for the clip ``result`` ranked, under the same licence filter: the same features when it
    reads the same video features (``other`` loaded without an extractor), its own extraction (in ``slot()``) otherwise."""
    spec = (other.run.data.get("features") or {}).get("video")
    if spec is None:
        raise DemoError(f"{model_label(other)} was trained on SYNTHETIC feature vectors and cannot rank an uploaded clip")
    if other.extractor is None:
        if result.features is None or result.features.shape[1] != other.run.model.video_dim:
            raise DemoError(f"{model_label(other)} reads other video features than the champion and has no extractor loaded")
        allowed_tracks(other, result.licence)  # a filter that allows none of its tracks: said in words, not a ValueError
        return other.recommend(result.features, k=result.k, licence=result.licence)
    return suggest(other, video_path, result.k, licence=result.licence, max_seconds=max_seconds, slot=slot,
                   recent=recent).suggestions


def moment_text(m: dict[str, Any] | None) -> str:
    """A moment as a table cell: "0:42.5 → 0:57.5 · downbeat", "loop 0:00.5–0:03.5 · beat", or "from the start"."""
    if not m:
        return "from the start"
    span = f"{clock(m['start'])} → {clock(m['end'])}" if not m["loop"] else f"loop {clock(m['start'])}–{clock(m['end'])}"
    return f"{span} · {m['snapped'] if m['snapped'] != 'none' else 'no beat found'}"


def licence_text(licence: str) -> str:
    """A licence as a table cell shows it: the short name as the catalog states it, cut at its first ';' (the demo
    corpus states the work's licence, then the encoding's; the attribution beside it carries the whole statement),
    or that it is unknown (served only when the person asked for unknown licences)."""
    stated = " ".join(licence.split())
    if not stated:
        return "unknown licence"
    first = stated.split(";")[0].strip()
    return stated if first == stated else f"{first} …"


def side_by_side(left: list[Suggestion], right: list[Suggestion]) -> list[list[Any]]:
    """Rows of rank, left "title (genre) · licence", right the same: whose tracks each model would have you license."""
    def cell(items: list[Suggestion], i: int) -> str:
        return f"{items[i].title} ({items[i].genre}) · {licence_text(items[i].licence)}" if i < len(items) else ""
    return [[i + 1, cell(left, i), cell(right, i)] for i in range(max(len(left), len(right)))]


# --------------------------------------------------------------------------- preview


# --------------------------------------------------------------------------- registry: what to load and show


@dataclass
class Comparison:
    """The model shown beside the champion and why it was picked."""

    rec: Recommender
    why: str  # "alias baseline", "previous champion", "another registered version"

    @property
    def label(self) -> str:
        return f"v{(self.rec.card.get('registry') or {}).get('version', '?')} ({self.why})"

    @property
    def about(self) -> str:
        """What the model is and why it is registered, from its card (the baseline says so; other versions are
        earlier candidates of the pipeline and say nothing)."""
        return str((self.rec.card.get("purpose") or {}).get("why") or "")


def comparison_model(champion: Recommender, device: str = "auto") -> Comparison | None:
    """The model to show beside ``champion``: alias ``baseline`` (which ``make demo`` registers with the first
    champion), else the champion's previous champion, else the newest other registered version; None when the
    champion is the only model.

    Loaded without its own extractor when it reads the same video features as the champion
    (the champion's features are reused), with it otherwise.
    """
    from deccm import registry

    mine = str((champion.card.get("registry") or {}).get("version") or "")
    versions = registry.list_versions()
    candidates: list[tuple[str, str]] = []
    for row in versions:
        if registry.BASELINE in row["aliases"]:
            candidates.append((row["version"], f"alias {registry.BASELINE}"))
    previous = (champion.card.get("registry") or {}).get("previous_champion")
    if previous and previous != "none":
        candidates.append((str(previous), "previous champion"))
    candidates += [(row["version"], "another registered version") for row in versions]
    for version, why in candidates:
        if version == mine:
            continue
        try:
            other = registry.load(version, device=device, extractor=False)
        except registry.RegistryError as e:
            log.warning("cannot load %s v%s for the comparison: %s", registry.MODEL_NAME, version, e)
            continue
        spec = (other.run.data.get("features") or {}).get("video")
        if spec is not None and spec != (champion.run.data.get("features") or {}).get("video"):
            other = registry.load(version, device=device, extractor=True)
        other.card.setdefault("registry", {})
        return Comparison(other, why)
    return None


def example_clips(rec: Recommender, n: int = 3) -> list[str]:
    """A few clips from the champion's own dataset (``videos.csv`` of ``rec.catalog.source['path']``), if it has media."""
    root = Path(str((rec.catalog.source or {}).get("path") or ""))
    if not root.is_dir():
        return []
    rows = [r for r in read_csv(root / VIDEOS_CSV) if r.get("kind", "ugc") == "ugc"]  # the data layer's reader
    found = []
    for r in rows:
        for cand in (r.get("path"), r.get("source")):
            if cand:
                p = Path(cand) if Path(cand).is_absolute() else root / cand
                if p.is_file() and p.suffix.lower() in {".mp4", ".mov", ".webm", ".m4v", ".mkv", ".avi"}:
                    found.append(str(p.resolve()))
                    break
    if len(found) <= n:
        return found
    idx = np.linspace(0, len(found) - 1, n).round().astype(int)
    return [found[i] for i in idx]


# --------------------------------------------------------------------------- the service behind the page


@dataclass
class Page:
    """Everything one Suggest press puts on the page; ``error`` set means nothing else is."""

    error: str | None = None
    result: SuggestResult | None = None
    comparison: list[Suggestion] | None = None
    comparison_note: str = ""
    served: ServedModel | None = field(default=None, repr=False)  # the model that answered (its labels head the table)

    @property
    def columns(self) -> list[str]:
        """The side-by-side table's header: rank, the answering model, the model beside it."""
        if self.served is None:
            return ["rank", "served model", "comparison"]
        return ["rank", self.served.label, self.served.comparison_label]

    def table(self) -> list[list[Any]]:
        """Rows of the ranking table: rank, title, artist, genre (with the measured tags where the catalog has them:
        the recorded catalog's genre is its soundtrack), score, licence, attribution (what to credit)."""
        if self.result is None:
            return []
        return [[s.rank, s.title, s.artist, f"{s.genre} ({s.tags})" if s.tags else s.genre, round(s.score, 4),
                 moment_text(s.moment), licence_text(s.licence), s.attribution] for s in self.result.suggestions]

    def status(self) -> str:
        if self.error:
            return f"**Cannot suggest music:** {self.error}"
        assert self.result is not None
        r = self.result
        lines = [f"Top {r.k} for **{r.clip}** from {r.model}, licence filter '{r.licence}', in {r.timings['total']:.2f} s "
                 f"(checks {r.timings['check']:.2f} s, video features {r.timings['features']:.2f} s, "
                 f"ranking {r.timings['rank'] * 1000:.1f} ms)."]
        lines += [f"- note: {n}" for n in r.notes]
        return "\n".join(lines)

    def side_by_side(self) -> list[list[Any]]:
        if self.result is None or self.comparison is None:
            return []
        return side_by_side(self.result.suggestions, self.comparison)

    def genre_bars(self) -> list[dict[str, Any]]:
        """Bars for a chart, catalog genre order: "<genre> · top k" and "<genre> · catalog", each with its share."""
        if self.result is None:
            return []
        out = []
        for row in self.result.genre_mix:
            out.append({"bar": f"{row['genre']} · top {self.result.k}", "share": row["suggestions"], "list": f"top {self.result.k}"})
            out.append({"bar": f"{row['genre']} · catalog", "share": row["catalog"], "list": "catalog"})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The page as JSON (audio as file names: server paths are not shown)."""
        d: dict[str, Any] = {"error": self.error}
        if self.result is not None:
            d.update(self.result.to_dict())
            for s in d["suggestions"]:
                s["audio"] = Path(s["audio"]).name if s["audio"] else None
        if self.comparison is not None:
            d["comparison"] = [{**s.to_dict(), "audio": Path(s.audio).name if s.audio else None} for s in self.comparison]
        if self.comparison_note:
            d["comparison_note"] = self.comparison_note
        return d


@dataclass(frozen=True)
class ServedModel:
    """One model as the page serves it: the champion, the model beside it, the audio and examples it may serve.

    Built whole before it is served and never changed after, so swapping it is one assignment
    and a request that took it keeps a consistent model to its end.
    """

    rec: Recommender
    comparison: Comparison | None
    audio: dict[str, str]  # catalog audio path → the checked file to serve
    examples: list[str]

    @property
    def label(self) -> str:
        return model_label(self.rec)

    @property
    def comparison_label(self) -> str:
        return self.comparison.label if self.comparison else "no other registered model"

    @property
    def comparison_note(self) -> str:
        return "" if self.comparison else "Only one model is registered, so there is nothing to compare with."

    @property
    def comparison_about(self) -> str:
        return self.comparison.about if self.comparison else ""


def serve_model(rec: Recommender, comparison: Comparison | None | bool = True, device: str = "auto") -> ServedModel:
    """``rec`` ready to serve: its comparison model (True picks one with :func:`comparison_model`), the checked
    catalog audio of both, and the checked example clips of its dataset."""
    cmp = comparison_model(rec, device=device) if comparison is True else (comparison or None)
    if rec.catalog.has_media():
        try:
            rec.catalog.with_moments()  # a bundle from before moments is analysed here, not in a request
        except MomentError as e:
            log.warning("%s: no moments (%s); tracks play from their start", model_label(rec), e)
    audio = _servable_audio([rec] + ([cmp.rec] if cmp else []))
    root = media_root(rec)
    return ServedModel(rec, cmp, audio, [p for p in example_clips(rec) if servable(p, root, "video")])


def provenance_kind(card: dict[str, Any]) -> str:
    """``synthetic``, ``generated`` (the demo corpus) or ``real``: what the model was trained on, for the health check."""
    kind = data_kind(card)
    return "generated" if kind == "recorded" else kind  # a recorded corpus's clips and picks are generated


NO_MODEL = ("No model yet: no deccm-student@champion is registered. The page serves the champion as soon as one is "
            "registered (train one with `make pipeline`, or `python -m deccm.pipeline run`).")


class DemoService:
    """The served model (the registry's champion, followed by a :class:`deccm.watch.ChampionWatcher`, or a fixed
    Recommender), the examples, the card, the media files it may serve, and the slots its heavy work shares.

    Each request takes :attr:`served` once and uses that model to its end; a swap between requests
    is one assignment (docs/architecture.md, "Serving follows the registry").
    """

    def __init__(self, rec: Recommender | None = None, comparison: Comparison | None | bool = True, device: str = "auto",
                 max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS, preview_dir: str | os.PathLike | None = None,
                 slots: int = HEAVY_SLOTS, poll_s: float | None = None):
        """``rec`` None serves ``deccm-student@champion``: read once here, and every ``poll_s`` seconds after when
        ``poll_s`` is set (a new version is loaded and swapped in); with no champion the service runs and says so.
        ``comparison`` True picks one with :func:`comparison_model`, None / False shows none."""
        from deccm.watch import POLL_S, ChampionWatcher

        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        self._served_dir = self._scratch("deccm-served-")  # snapshots of checked tracks, made when first played
        self._copies: dict[str, str] = {}  # checked file -> its snapshot
        self._moments: dict[str, str] = {}  # (checked file, moment) key -> the rendered moment
        self.preview_dir = Path(preview_dir) if preview_dir else self._scratch("deccm-previews-")
        self._slots = threading.BoundedSemaphore(slots)
        self.recent = RecentClips()
        self._lock = threading.Lock()
        self.busy = 0  # heavy jobs running now
        self.busy_peak = 0  # the most that ever ran at once
        self.watcher: ChampionWatcher[ServedModel] | None = None
        self._fixed: ServedModel | None = None
        if rec is not None:
            self._fixed = serve_model(rec, comparison, device)
        else:
            from deccm import registry

            self.watcher = ChampionWatcher(lambda v: serve_model(registry.load(v, device=device), comparison, device),
                                           poll_s=poll_s or POLL_S)
            self.watcher.poll()
            if poll_s:
                self.watcher.start()
        first = self.served
        self.examples = first.examples if first else []  # the page's example list is laid out once, at start

    @property
    def served(self) -> ServedModel | None:
        """The model served now, or None before any champion is registered."""
        if self.watcher is None:
            return self._fixed
        current = self.watcher.served
        return current.model if current else None

    @property
    def rec(self) -> Recommender | None:
        served = self.served
        return served.rec if served else None

    @property
    def comparison(self) -> Comparison | None:
        served = self.served
        return served.comparison if served else None

    @property
    def label(self) -> str:
        served = self.served
        return served.label if served else "no model yet"

    @property
    def comparison_label(self) -> str:
        served = self.served
        return served.comparison_label if served else "no other registered model"

    @property
    def comparison_note(self) -> str:
        served = self.served
        return served.comparison_note if served else ""

    @property
    def comparison_about(self) -> str:
        """Why the model beside the champion is there (the baseline's card says), or ''."""
        served = self.served
        return served.comparison_about if served else ""

    @property
    def examples_label(self) -> str:
        served = self.served
        generated = served is not None and data_kind(served.rec.card) != "real"
        return "Example clips from the model's own dataset" + (" (GENERATED clips, drawn by ffmpeg)" if generated else "")

    @property
    def card(self) -> str:
        served = self.served
        return card_markdown(served.rec.card) if served else NO_MODEL

    @property
    def warning(self) -> str:
        served = self.served
        return data_warning(served.rec.card) if served else ""

    def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` reports: the served version, model name and provenance, or why nothing is served."""
        served = self.served
        out: dict[str, Any] = {"status": "serving" if served else "no model", "model": None, "version": None}
        if served is not None:
            reg = served.rec.card.get("registry") or {}
            trained = served.rec.card.get("trained_on") or {}
            out.update(model=reg.get("name", served.rec.name), version=reg.get("version"), run=served.rec.card.get("run"),
                       provenance=provenance_kind(served.rec.card), trained_on=trained.get("provenance"))
        else:
            out["reason"] = NO_MODEL
        if self.watcher is not None:
            current = self.watcher.served
            out.update(follows="deccm-student@champion", poll_s=self.watcher.poll_s if self.watcher.running else None,
                       last_error=self.watcher.last_error, since=current.since if current else None)
        return out

    def _scratch(self, prefix: str) -> Path:
        """A temp dir of this service's own, removed with it (when it is collected, or when the process exits)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        weakref.finalize(self, shutil.rmtree, path, True)
        return path

    def close(self) -> None:
        """Stop following the registry (the served model stays)."""
        if self.watcher is not None:
            self.watcher.stop()

    def static_files(self) -> list[str]:
        """The only files the page serves as they are: the checked example clips (resolved paths), one by one."""
        return sorted(self.examples)

    def playable(self, audio: str | None, served: ServedModel | None = None,
                 moment: dict[str, Any] | None = None) -> str | None:
        """A snapshot of the checked file for a catalog ``audio`` path of ``served`` (default: the model served now),
        or None when it may not be served (what a player and the preview use). With ``moment`` (a suggestion's), the
        moment rendered from that file instead: cut on the beat to the clip's length, faded, looped if short.

        The snapshot lives in the service's own temp folder, so Gradio copies it into its cache like any output
        and the catalog folder is never a static path; a file swapped after the check is never served.
        """
        served = served or self.served
        real = served.audio.get(audio) if audio and served else None
        if real is None:
            return None
        if moment is not None:
            return self._rendered(real, moment, served)
        with self._lock:
            copy = self._copies.get(real)
        if copy is None:
            dest = self._served_dir / hashlib.sha256(real.encode()).hexdigest()[:16] / Path(real).name
            dest.parent.mkdir(exist_ok=True)
            with safeio.atomic_path(dest) as tmp:
                shutil.copyfile(real, tmp)
            copy = str(dest)
            with self._lock:
                self._copies[real] = copy
        return copy

    def _rendered(self, real: str, moment: dict[str, Any], served: ServedModel) -> str:
        """The moment of checked file ``real`` as a WAV in the service's folder (made once per file and moment)."""
        spec = served.rec.catalog.with_moments().spec
        m = _Moment(float(moment["start"]), float(moment["length"]),
                    float(moment["end"]) if moment["loop"] else None)
        key = hashlib.sha256(f"{real}|{m.start}|{m.length}|{m.loop_end}|{spec.spec_id}".encode()).hexdigest()[:16]
        with self._lock:
            done = self._moments.get(key)
        if done is None:
            dest = self._served_dir / "moments" / f"{Path(real).stem[:16]}-{key}.wav"
            y = load_samples(real, spec.render_rate, min(spec.max_track_s, m.end + spec.crossfade_s + 1.0))
            write_wav(dest, render(y, spec.render_rate, m, spec), spec.render_rate)
            done = str(dest)
            with self._lock:
                self._moments[key] = done
        return done

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of the slots that decoding, ranking and preview encoding share; a request that cannot get one is told so."""
        if not self._slots.acquire(timeout=SLOT_WAIT_S):
            raise DemoError(f"the demo is busy: {HEAVY_SLOTS} clips are being processed and more are waiting. "
                            "Try again in a minute.")
        with self._lock:
            self.busy += 1
            self.busy_peak = max(self.busy_peak, self.busy)
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
            self._slots.release()

    def respond(self, video: str | os.PathLike | None, k: int = 10, licence: str = DEFAULT_LICENCE) -> Page:
        """One Suggest press: the served model's ranking and the comparison model's under the same licence filter,
        or the reason there is none.

        The model is taken once, here: a swap while the clip is processed changes the next request, not this one.
        """
        served = self.served
        if served is None:
            return Page(error=NO_MODEL)
        try:
            result = suggest(served.rec, video, k, licence=licence, max_bytes=self.max_bytes, max_seconds=self.max_seconds,
                             slot=self.slot, recent=self.recent)
        except DemoError as e:
            return Page(error=str(e), served=served)
        except Exception as e:  # noqa: BLE001 - whatever an upload triggers reaches the page as one line, never a traceback
            return Page(error=_unexpected(e, video), served=served)
        result.suggestions = [replace(s, audio=self.playable(s.audio, served, s.moment if i < TOP_AUDIO else None))
                              for i, s in enumerate(result.suggestions)]
        page = Page(result=result, served=served)
        if served.comparison is None:
            page.comparison_note = served.comparison_note
        else:
            try:
                page.comparison = rank_like(served.comparison.rec, result, video, self.max_seconds, slot=self.slot,
                                            recent=self.recent)
            except DemoError as e:
                page.comparison_note = f"{served.comparison.label} cannot rank this clip: {e}"
            except Exception as e:  # noqa: BLE001 - as above
                page.comparison_note = f"{served.comparison.label} cannot rank this clip: {_unexpected(e, video)}"
        return page

    def preview(self, video: str | os.PathLike | None, audio: str | None) -> Path | None:
        """The clip with the top track under it; None when there is no clip or no track audio yet.

        ``audio`` must be one of the files this service serves (a client may send any
        string); the clip passes :func:`check_upload` before it takes a slot.
        """
        if not video or not audio:
            return None
        with self._lock:
            known = str(audio) in self._copies.values() or str(audio) in self._moments.values()
        if not known:
            raise DemoError(f"{Path(str(audio)).name} is not a track of the served catalog: nothing to lay under the clip")
        up = check_upload(video, max_bytes=self.max_bytes, max_seconds=self.max_seconds)
        with self.slot():
            _prune(self.preview_dir, PREVIEW_KEEP_S)
            try:
                # as long as the part that was ranked (a heavy clip's first seconds; the moment was rendered to it)
                ranked = up.used_seconds if up.used_seconds is not None else self.max_seconds
                return preview(up.path, audio, self.preview_dir, ranked)
            except DemoError:
                raise
            except Exception as e:  # noqa: BLE001 - as in respond
                raise DemoError(_unexpected(e, video)) from None


def _unexpected(e: Exception, video: str | os.PathLike | None) -> str:
    """The person's message for an error no check foresaw; the log keeps the details (the traceback at debug level)."""
    name = Path(str(video)).name if video else "the clip"
    log.error("%s: unexpected %s: %s", name, type(e).__name__, e)
    log.debug("%s: traceback", name, exc_info=True)
    return f"{name} could not be processed ({type(e).__name__}). Try another clip; the server log has the details."


def media_root(rec: Recommender) -> Path | None:
    """The served model's dataset media folder, resolved: the only folder the demo serves files from."""
    root = (rec.catalog.source or {}).get("path")
    folder = Path(str(root)) / MEDIA_DIR if root else None
    return folder.resolve() if folder is not None and folder.is_dir() else None


def servable(path: str | os.PathLike | None, root: Path | None, kind: str) -> str | None:
    """``path`` resolved (symlinks followed) when it is a regular file inside ``root`` that passes the media rule
    for ``kind``; None otherwise."""
    if not path or root is None:
        return None
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file() or not real.is_relative_to(root):
        return None
    try:
        admit.check(real, kind, admit.TRACK if kind == "audio" else LIMITS)
    except DecodeError:
        return None
    return str(real)


def _servable_audio(recs: list[Recommender]) -> dict[str, str]:
    """Catalog audio path → the checked file to serve, for each model's tracks under its own audio folder (the
    bundle's content-addressed ``catalog/audio/``, or for a bundle without one the dataset's media folder)."""
    out: dict[str, str] = {}
    refused = 0
    for rec in recs:
        root = rec.catalog.audio_root or media_root(rec)  # a bundle's own checked audio, else the dataset's media
        for t in rec.catalog.tracks:
            audio = t.get("audio")
            if audio and audio not in out:
                real = servable(audio, root, "audio")
                if real is None:
                    refused += 1
                else:
                    out[audio] = real
    if refused:
        log.warning("%d catalog audio files are not served: missing, outside the dataset's %s/ folder, or not accepted "
                    "audio", refused, MEDIA_DIR)
    return out


def _prune(folder: Path, max_age_s: float) -> None:
    """Delete previews older than ``max_age_s`` (a long-running demo must not fill the disk)."""
    cutoff = time.time() - max_age_s
    for f in folder.glob("preview-*.mp4"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
        except FileNotFoundError:
            pass  # another request pruned it

