"""Own media → dataset: feature stores + usage logs + track metadata → one native dataset.

Inputs (``deccm data assemble``; every path is recorded in the manifest):

* ``videos``: the feature store of the uploaded videos (``python -m deccm.features videos
  --out DIR``: ``DIR`` or ``DIR/features/videos``); its ``items.csv`` ``id`` is a video id.
* ``tracks``: the music feature store of the catalog (``... music --out DIR``); its
  ``items.csv`` ``id`` is a track id. Its normalised features and the statistics that
  normalised them become ``ugc/music_features`` and ``ugc/music_norm_{mean,std}``.
* ``logs``: CSV ``video,track[,uploader]``, one row per logged use of a track on a video
  (a video may have several rows; one uploader per video).
* ``tracks_meta``: CSV ``id,title,artist,genre,licence,path`` (``path`` = the audio file,
  relative to the CSV; ``genre`` may be absent or empty for every track; an optional
  ``copyright`` column is kept beside ``licence``, which serving filters on; other columns
  are ignored). Exactly the tracks of the music store, each once.
* optional ``pgc`` (a ``videos`` store of professionally edited segments, extracted with
  the same spec as ``videos``) and ``pgc_pairs``: CSV ``segment,track``.

What it makes (``provenance: extracted``): train/val/test splits drawn by ``seed`` over the
*distinct logged videos* (``val_fraction`` / ``test_fraction`` of them, at least one
each), plus a ``gate`` split (``gate_fraction``, taken from what would otherwise train, so
val and test keep their clips), so one video is never in two splits; rows keep their CSV order inside a split.
Priors, propensities, inverse-popularity weights and 100 negatives per val/test row come
from ``deccm.data.protocol``, as for the synthetic benchmark and the demo corpus. There is
no ``test_oracle``: only generated data know the true affinity. ``video_genre`` is all
zeros: usage logs carry no video genre, and one derived from the logged track would leak
the label. Genres are the sorted distinct non-empty ``genre`` values; without any, one
group ``unknown``. Without an ``uploader`` column every prior is the global training genre
share. Either way the confounder adjustment has nothing to work with, and the manifest
says so: ``"confounder": {"available": false, "reason": ...}``.

Ids: a track's dataset id is its row in the music store, a video's its position among the
logged videos in video-store order, a PGC segment's its position among the paired
segments in PGC-store order. ``tracks.csv`` keeps your track id in ``source`` as
``id:<your id>`` (the format has no other free column) and points ``path`` at the audio,
hard-linked (copied across filesystems) into ``media/tracks/<dataset id><ext>``.
``videos.csv``: ``id, kind (ugc|pgc), ext_id (your id), source (the store's path), uploader``.

Re-running is safe: the manifest records a fingerprint (sha256 of every input CSV and of
each store's ``spec.json``, ``items.csv``, ``features.npy`` and normalisation statistics,
plus the options); a ``dest`` with the same fingerprint is returned untouched, a different
dataset there is refused unless ``overwrite`` (then replaced atomically).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deccm import safeio
from deccm.data import protocol
from deccm.data.format import (
    MANIFEST,
    MEDIA_DIR,
    N_NEGATIVES,
    PGC,
    UGC,
    DatasetError,
    PairRows,
    read_dataset,
    read_manifest,
    write_dataset,
)
from deccm.data.validate import check
from deccm.features.spec import SpecMismatch, require_same
from deccm.features.store import FeatureStore, StoreError, load_store, store_dir

log = logging.getLogger(__name__)

VERSION = 1  # bump when the same inputs would assemble into a different dataset
MEDIA = MEDIA_DIR
UNKNOWN_GENRE = "unknown"
DEFAULT_NAME = "assembled"
MAX_SHOWN = 5  # lines / ids quoted per problem
LOG_COLUMNS = (("video", "track"), ("uploader",))  # (required, optional)
PAIR_COLUMNS = (("segment", "track"), ())
META_COLUMNS = (("id", "path"), ("title", "artist", "genre", "licence", "copyright"))
STORE_FILES = ("spec.json", "items.csv", "features.npy")  # what the fingerprint hashes of a store
STORE_FILES_OPTIONAL = ("norm_mean.npy", "norm_std.npy")
_PATHS = ("videos", "tracks", "logs", "tracks_meta", "pgc", "pgc_pairs")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AssembleConfig:
    """The inputs and options of one assembly (paths may be given as strings)."""

    videos: Path
    tracks: Path
    logs: Path
    tracks_meta: Path
    pgc: Path | None = None
    pgc_pairs: Path | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    gate_fraction: float = 0.1  # clips held out for the promotion gate (deccm.gate); 0 = none
    pgc_val_fraction: float = 0.1
    prior_smoothing: float = 1.0  # α of the uploader prior (deccm.data.protocol.uploader_priors)
    name: str | None = None

    def __post_init__(self) -> None:
        for key in _PATHS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, key, Path(value))
        if (self.pgc is None) != (self.pgc_pairs is None):
            raise ValueError("assemble: give both pgc (a videos feature store of PGC segments) and pgc_pairs "
                             "(CSV segment,track), or neither")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"assemble: seed must be a non-negative integer, got {self.seed!r}")
        for key in ("val_fraction", "test_fraction", "pgc_val_fraction"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
                raise ValueError(f"assemble: {key} must be a number in (0, 1), got {v!r}")
        g = self.gate_fraction
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not 0 <= g < 1:
            raise ValueError(f"assemble: gate_fraction must be a number in [0, 1), got {g!r}")
        if self.val_fraction + self.test_fraction + g >= 1:
            raise ValueError(f"assemble: val_fraction + test_fraction + gate_fraction = "
                             f"{self.val_fraction + self.test_fraction + g:g} leaves no training rows; keep their sum below 1")
        if not isinstance(self.prior_smoothing, (int, float)) or self.prior_smoothing <= 0:
            raise ValueError(f"assemble: prior_smoothing must be a positive number, got {self.prior_smoothing!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()
                                      or Path(self.name).name != self.name or self.name in (".", "..")):
            raise ValueError(f"assemble: name must be a plain directory name (no path separators), got {self.name!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AssembleConfig:
        """Build from a plain dict (a TOML table, a DAG's params); unknown or missing keys are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"assemble: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if d.get(n) is None]
        if missing:
            raise ValueError(f"assemble: missing required option(s) {', '.join(map(repr, missing))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (paths as strings) that :meth:`from_dict` reads back."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def options(self) -> dict[str, Any]:
        """Everything but the paths: what, with the inputs' contents, decides the dataset."""
        return {k: v for k, v in self.to_dict().items() if k not in _PATHS}


# --------------------------------------------------------------------------- errors and CSVs


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_SHOWN])
    more = f" (+{len(lines) - MAX_SHOWN} more)" if len(lines) > MAX_SHOWN else ""
    return f"{'line' if len(lines) == 1 else 'lines'} {shown}{more}"


def _ids(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_SHOWN])
    return shown + (f" (+{len(ids) - MAX_SHOWN} more)" if len(ids) > MAX_SHOWN else "")


def _problem(path: Path, lines: list[int] | None, what: str, fix: str) -> DatasetError:
    where = f" {_lines(lines)}:" if lines else ""
    return DatasetError(f"{path}:{where} {what}. Fix: {fix}")


@dataclass
class _Csv:
    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]  # 1-based line of each row (the header is line 1)


def _read_csv(path: Path, columns: tuple[tuple[str, ...], tuple[str, ...]], what: str, option: str,
              strict: bool) -> _Csv:
    """Read a CSV with a header; required columns must be there, others only when optional (``strict``)."""
    required, optional = columns
    if not path.is_file():
        raise _problem(path, None, f"no such file (the {what})", f"pass the {what} CSV with {option}")
    try:
        return _parse_csv(path, required, optional, what, strict)
    except (UnicodeDecodeError, csv.Error) as e:
        raise _problem(path, None, f"not a readable UTF-8 CSV ({e})", "save it as UTF-8 CSV with a header line") from e


def _parse_csv(path: Path, required: tuple[str, ...], optional: tuple[str, ...], what: str, strict: bool) -> _Csv:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        expected = ",".join(required) + "".join(f"[,{c}]" for c in optional)
        missing = [c for c in required if c not in header]
        extra = [c for c in header if c not in required + optional] if strict else []
        dup = sorted({c for c in header if header.count(c) > 1})
        if missing or extra or dup or not header:
            found = ",".join(header) or "nothing"
            detail = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                             f"unknown {', '.join(extra)}" if extra else "",
                                             f"repeated {', '.join(dup)}" if dup else ""]))
            raise _problem(path, [1], f"columns are {found} ({detail or 'no header'}), expected {expected}",
                           f"make the first line the header {expected}" + (" (other columns are ignored)" if not strict else ""))
        rows, lines, ragged = [], [], []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                ragged.append(reader.line_num)
            cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
            rows.append(dict(zip(header, cells)))
            lines.append(reader.line_num)
    if ragged:
        raise _problem(path, ragged, f"more cells than the {len(header)} header columns",
                       "quote cells that contain commas, or remove the extra cells")
    if not rows:
        raise _problem(path, None, f"no rows after the header (the {what})", f"give at least one row of {expected}")
    return _Csv(path, header, rows, lines)


def _require_filled(t: _Csv, column: str, fix: str) -> None:
    empty = [ln for r, ln in zip(t.rows, t.lines) if not r[column]]
    if empty:
        raise _problem(t.path, empty, f"empty {column}", fix)


# --------------------------------------------------------------------------- stores and fingerprint


def _store_path(path: Path, kind: str, option: str) -> Path:
    """The store directory itself: ``path`` when it holds spec.json, else ``path/features/<kind>``."""
    if (path / "spec.json").is_file():
        return path
    sub = store_dir(path, kind)
    if (sub / "spec.json").is_file():
        return sub
    raise DatasetError(f"{path}: no {kind} feature store here (no spec.json in it or in {sub}). Fix: pass to {option} "
                       f"the --out directory of `python -m deccm.features {kind}` or its features/{kind}/ directory")


def _load(path: Path, kind: str, option: str) -> FeatureStore:
    try:
        return load_store(path, kind)
    except (StoreError, OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{path}: cannot read the {kind} feature store given as {option} ({e}). "
                           f"Fix: re-run `python -m deccm.features {kind} --in ... --out DIR` and pass DIR") from e


def _sha(path: Path) -> str:
    try:
        return safeio.sha256_file(path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: no such file. Fix: restore it or pass the right input") from e


def _spec_sha(path: Path) -> str:
    """sha256 of what a store's spec.json says about its features (the extractor spec, normalisation), not of
    its run summary: a store re-extracted from the cache holds the same features and must count as the same input."""
    _sha(path)  # a clear error when it is missing
    meta = json.loads(path.read_text())
    body = {k: meta.get(k) for k in ("kind", "dims", "spec", "normalisation")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def fingerprint(cfg: AssembleConfig) -> dict[str, Any]:
    """sha256 of every input (CSVs; each store's spec.json, items.csv, features.npy, norm stats) and the options.

    Returns ``{"digest", "inputs": {name: {"path", "sha256"}}, "options"}``; the digest (over the
    contents and options, not the paths) identifies the dataset these inputs assemble into.
    """
    inputs: dict[str, dict[str, str]] = {}
    for key, kind in (("videos", "videos"), ("tracks", "music"), ("pgc", "videos")):
        if getattr(cfg, key) is None:
            continue
        root = _store_path(getattr(cfg, key), kind, f"--{key}")
        names = STORE_FILES + tuple(n for n in STORE_FILES_OPTIONAL if (root / n).exists())
        for name in names:
            sha = _spec_sha(root / name) if name == "spec.json" else _sha(root / name)
            inputs[f"{key}/{name}"] = {"path": str(root / name), "sha256": sha}
    for key in ("logs", "tracks_meta", "pgc_pairs"):
        path = getattr(cfg, key)
        if path is not None:
            if not path.is_file():
                raise DatasetError(f"{path}: no such file (given as --{key.replace('_', '-')}). Fix: pass the right CSV")
            inputs[key] = {"path": str(path), "sha256": _sha(path)}
    body = {"version": VERSION, "inputs": {k: v["sha256"] for k, v in inputs.items()}, "options": cfg.options()}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "version": VERSION, "inputs": inputs, "options": cfg.options()}


def _existing_digest(dest: Path) -> str | None:
    try:
        return read_manifest(dest).get("source", {}).get("fingerprint")
    except DatasetError:
        return None


# --------------------------------------------------------------------------- reading the inputs


@dataclass
class _Tracks:
    genres: list[str]
    genre: np.ndarray  # (M,) int64
    rows: list[dict[str, Any]]  # tracks.csv rows without path (set when the audio is linked in)
    audio: list[Path]
    has_genres: bool


def _read_tracks(cfg: AssembleConfig, mstore: FeatureStore, mpath: Path) -> _Tracks:
    t = _read_csv(cfg.tracks_meta, META_COLUMNS, "tracks metadata", "--tracks-meta", strict=False)
    meta = cfg.tracks_meta
    _require_filled(t, "id", "give every row the track's id as in the music store's items.csv")
    first: dict[str, int] = {}
    dups = []
    for r, ln in zip(t.rows, t.lines):
        if r["id"] in first:
            dups.append(ln)
        first.setdefault(r["id"], ln)
    if dups:
        raise _problem(meta, dups, "repeats a track id of an earlier row", "keep one row per track")
    in_store = set(mstore.ids)
    extra = [(r["id"], ln) for r, ln in zip(t.rows, t.lines) if r["id"] not in in_store]
    if extra:
        raise _problem(meta, [ln for _, ln in extra], f"track id(s) {_ids([i for i, _ in extra])} are not in the music "
                       f"store {mpath}", "extract their features (python -m deccm.features music) or remove the rows")
    absent = [(i, k + 2) for k, i in enumerate(mstore.ids) if i not in first]
    if absent:
        raise _problem(meta, None, f"no row for track(s) {_ids([i for i, _ in absent])} of the music store {mpath} "
                       f"(items.csv {_lines([ln for _, ln in absent])})",
                       "add a row (id,title,artist,genre,licence,path) for every track of the store")
    by_id = {r["id"]: (r, first[r["id"]]) for r in t.rows}
    ordered = [by_id[i] for i in mstore.ids]  # store order = dataset track id

    has_genres = "genre" in t.columns and any(r["genre"] for r, _ in ordered)
    if has_genres:
        blank = [ln for r, ln in ordered if not r["genre"]]
        if blank:
            n_with = sum(1 for r, _ in ordered if r["genre"])
            raise _problem(meta, sorted(blank), f"no genre, while {n_with} other tracks have one",
                           "give every track a genre (or leave the genre column empty for all tracks)")
        genres = sorted({r["genre"] for r, _ in ordered})
    else:
        genres = [UNKNOWN_GENRE]
    index = {name: k for k, name in enumerate(genres)}
    genre = np.array([index[r["genre"]] if has_genres else 0 for r, _ in ordered], dtype=np.int64)

    _require_filled(t, "path", "give every track the path of its audio file (relative to this CSV)")
    audio = [Path(r["path"]).expanduser() for r, _ in ordered]
    audio = [p if p.is_absolute() else meta.parent / p for p in audio]
    missing = [(ln, p) for (_, ln), p in zip(ordered, audio) if not p.is_file()]
    if missing:
        missing.sort()
        raise _problem(meta, [ln for ln, _ in missing], f"audio file(s) not found: {', '.join(str(p) for _, p in missing[:MAX_SHOWN])}",
                       "fix the path (relative to the CSV's folder) or restore the file")
    rows = [{"id": k, "title": r.get("title", ""), "artist": r.get("artist", ""), "genre": genres[genre[k]],
             "source": f"id:{mstore.ids[k]}", "licence": r.get("licence", ""), "copyright": r.get("copyright", "")}
            for k, (r, _) in enumerate(ordered)]
    return _Tracks(genres=genres, genre=genre, rows=rows, audio=audio, has_genres=has_genres)


@dataclass
class _Logs:
    video_row: np.ndarray  # (N,) row of the video store
    track: np.ndarray  # (N,) dataset track id
    uploader: list[str] | None  # (N,) uploader name per row


def _read_pairs(t: _Csv, left: str, left_store: FeatureStore, left_path: Path, left_fix: str,
                track_index: dict[str, int], mpath: Path) -> tuple[np.ndarray, np.ndarray]:
    """(store row of the left id, track id) per row; unknown ids, empty cells and repeated rows are errors."""
    _require_filled(t, left, f"give every row a {left} id as in {left_path}/items.csv")
    _require_filled(t, "track", f"give every row a track id as in {mpath}/items.csv")
    left_index = {i: k for k, i in enumerate(left_store.ids)}
    unknown = [(r[left], ln) for r, ln in zip(t.rows, t.lines) if r[left] not in left_index]
    if unknown:
        failed = sorted({i for i, _ in unknown} & set(left_store.failed_ids))
        why = f" (extraction failed for {_ids(failed)}: see {left_path}/failures.csv)" if failed else ""
        raise _problem(t.path, [ln for _, ln in unknown],
                       f"{left} id(s) {_ids([i for i, _ in unknown])} are not in the {left} store {left_path}{why}", left_fix)
    unknown = [(r["track"], ln) for r, ln in zip(t.rows, t.lines) if r["track"] not in track_index]
    if unknown:
        raise _problem(t.path, [ln for _, ln in unknown],
                       f"track id(s) {_ids([i for i, _ in unknown])} are not in the music store {mpath}",
                       "extract the tracks' features (python -m deccm.features music) or drop these rows")
    seen: dict[tuple[str, str], int] = {}
    dups = []
    for r, ln in zip(t.rows, t.lines):
        key = (r[left], r["track"])
        if key in seen:
            dups.append((ln, seen[key]))
        seen.setdefault(key, ln)
    if dups:
        raise _problem(t.path, [ln for ln, _ in dups], f"repeat(s) the {left},track pair of line "
                       f"{', '.join(str(first) for _, first in dups[:MAX_SHOWN])}", "remove the duplicate rows")
    return (np.array([left_index[r[left]] for r in t.rows], dtype=np.int64),
            np.array([track_index[r["track"]] for r in t.rows], dtype=np.int64))


def _read_logs(cfg: AssembleConfig, vstore: FeatureStore, vpath: Path, track_index: dict[str, int], mpath: Path) -> _Logs:
    t = _read_csv(cfg.logs, LOG_COLUMNS, "usage logs", "--logs", strict=True)
    video_row, track = _read_pairs(t, "video", vstore, vpath, "extract the videos' features "
                                   "(python -m deccm.features videos) or drop these rows", track_index, mpath)
    uploader = None
    if "uploader" in t.columns:
        _require_filled(t, "uploader", "give every row its video's uploader, or drop the uploader column for all rows")
        owner: dict[str, tuple[str, int]] = {}
        clash = []
        for r, ln in zip(t.rows, t.lines):
            prev = owner.setdefault(r["video"], (r["uploader"], ln))
            if prev[0] != r["uploader"]:
                clash.append((ln, r["video"], r["uploader"], prev))
        if clash:
            _, vid, who, (before, first) = clash[0]
            raise _problem(t.path, [c[0] for c in clash], f"video {vid!r} has uploader {who!r} here but {before!r} on "
                           f"line {first}", "give each video one uploader")
        uploader = [r["uploader"] for r in t.rows]
    return _Logs(video_row=video_row, track=track, uploader=uploader)


# --------------------------------------------------------------------------- assembling


def _split_sizes(n_groups: int, fractions: tuple[float, ...]) -> list[int]:
    """Groups in each non-training split: ``round(f · n)``, at least one."""
    return [max(1, int(round(f * n_groups))) for f in fractions]


def _split_groups(rng: np.random.Generator, n_groups: int, sizes: list[int]) -> np.ndarray:
    """Split label per group (0 = train, k = the k-th of ``sizes``), groups drawn at random by ``rng``."""
    perm = rng.permutation(n_groups)
    label = np.zeros(n_groups, dtype=np.int64)
    start = 0
    for k, size in enumerate(sizes, start=1):
        label[perm[start:start + size]] = k
        start += size
    return label


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra space), or copy it when they are on different filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _music_blocks(spec: dict[str, Any]) -> dict[str, Any]:
    blocks = [b for b in spec.get("blocks", []) if "start" in b and "stop" in b]
    return {"music_blocks": [{"name": b["name"], "dim": int(b["stop"]) - int(b["start"])} for b in blocks]} if blocks else {}


def assemble(cfg: AssembleConfig, dest: str | Path, overwrite: bool = False) -> Path:
    """Assemble ``cfg``'s inputs into a validated native dataset at ``dest``; returns ``dest``.

    A ``dest`` already assembled from the same inputs and options is returned untouched; one
    holding anything else raises :class:`FileExistsError` unless ``overwrite`` (then it is
    replaced atomically, only once the new dataset is complete). Input problems raise
    :class:`DatasetError` naming the file, the CSV line and the fix, before anything is written.
    """
    dest = Path(dest)
    vpath = _store_path(cfg.videos, "videos", "--videos")
    mpath = _store_path(cfg.tracks, "music", "--tracks")
    ppath = _store_path(cfg.pgc, "videos", "--pgc") if cfg.pgc is not None else None
    fp = fingerprint(cfg)
    if dest.exists():
        has_manifest = (dest / MANIFEST).is_file()
        old = _existing_digest(dest) if has_manifest else None
        if old == fp["digest"]:
            log.info("%s was assembled from these inputs and options already; nothing to do", dest)
            return dest
        if not overwrite:
            what = ("a dataset assembled from other inputs or options" if old else
                    "a dataset not made by deccm data assemble" if has_manifest else "something that is not a dataset")
            raise FileExistsError(f"{dest} already exists and holds {what}; pass --overwrite to replace it "
                                  "(or choose another destination)")

    vstore = _load(vpath, "videos", "--videos")
    mstore = _load(mpath, "music", "--tracks")
    pstore = _load(ppath, "videos", "--pgc") if ppath is not None else None
    if pstore is not None:
        try:
            require_same(vstore.spec, pstore.spec, f"video store {vpath}", f"PGC store {ppath}")
        except SpecMismatch as e:
            raise DatasetError(f"{ppath}/spec.json: {e}. Fix: extract the PGC segments with the same "
                               "`python -m deccm.features videos` settings as the videos") from e
    if len(mstore) <= N_NEGATIVES:
        raise DatasetError(f"{mpath}: the music store holds {len(mstore)} tracks; the 1 positive + {N_NEGATIVES} "
                           f"negatives protocol needs at least {N_NEGATIVES + 1}. "
                           f"Fix: extract features for {N_NEGATIVES + 1 - len(mstore)} more tracks")
    tracks = _read_tracks(cfg, mstore, mpath)
    track_index = {i: k for k, i in enumerate(mstore.ids)}
    logs = _read_logs(cfg, vstore, vpath, track_index, mpath)
    ugc, videos = _ugc(cfg, vstore, mstore, tracks, logs)
    pgc = None
    if pstore is not None:
        pgc, segments = _pgc(cfg, pstore, ppath, track_index, mpath, ugc.music_features)
        videos += segments
    manifest = _manifest(cfg, fp, tracks, vstore, mstore, logs.uploader is not None)
    _write(dest, manifest, ugc, pgc, tracks, videos, overwrite)
    log.info("assembled %s: %d train / %d val / %d test / %d gate rows, %d tracks, %d genres", dest, len(ugc.train),
             len(ugc.val), len(ugc.test), len(ugc.gate) if ugc.gate is not None else 0, len(mstore), len(tracks.genres))
    return dest


def _ugc(cfg: AssembleConfig, vstore: FeatureStore, mstore: FeatureStore, tracks: _Tracks,
         logs: _Logs) -> tuple[UGC, list[dict[str, Any]]]:
    """Logged videos (in store order), the seeded split over them, the protocol's rows; and their videos.csv rows."""
    used = np.unique(logs.video_row)
    video_id = np.full(len(vstore), -1, dtype=np.int64)
    video_id[used] = np.arange(len(used))
    video = video_id[logs.video_row]
    # the gate comes last in the permutation: val and test keep the clips they had before it existed
    sizes = _split_sizes(len(used), (cfg.val_fraction, cfg.test_fraction) + ((cfg.gate_fraction,) if cfg.gate_fraction else ()))
    if len(used) - sum(sizes) < 1:
        raise _problem(cfg.logs, None, f"{len(used)} distinct logged video(s) cannot fill train, val "
                       f"({cfg.val_fraction:g}), test ({cfg.test_fraction:g}) and gate ({cfg.gate_fraction:g}): each split "
                       "needs at least one video", f"log at least {sum(sizes) + 1} distinct videos, or set gate_fraction 0")
    split = _split_groups(np.random.default_rng([cfg.seed, 1]), len(used), sizes)[video]  # per row, via its video
    tr, va, te, ga = (np.flatnonzero(split == k) for k in range(4))

    g = len(tracks.genres)
    uploader: np.ndarray | None = None
    n_up: int | None = None
    if logs.uploader is not None:
        names = sorted(set(logs.uploader))
        index = {u: k for k, u in enumerate(names)}
        uploader, n_up = np.array([index[u] for u in logs.uploader], dtype=np.int64), len(names)

    def rows_of(rows: np.ndarray) -> np.ndarray | None:
        return None if uploader is None else uploader[rows]

    train = protocol.train_rows(video[tr], logs.track[tr], np.zeros((len(tr), g), dtype=np.uint8), tracks.genre, g,
                                uploader=rows_of(tr), n_uploaders=n_up, alpha=cfg.prior_smoothing)
    rng = np.random.default_rng([cfg.seed, 2])
    val, test, gate = (protocol.rank_rows(rng, video[s], logs.track[s], train, tracks.genre, g, uploader=rows_of(s),
                                          n_uploaders=n_up, alpha=cfg.prior_smoothing) if len(s) else None
                       for s in (va, te, ga))
    ugc = UGC(video_features=np.asarray(vstore.features, dtype=np.float32)[used],
              music_features=np.asarray(mstore.features, dtype=np.float32),
              prior_mean=protocol.prior_mean(train.prior), music_genre=tracks.genre,
              music_norm_mean=mstore.norm_mean, music_norm_std=mstore.norm_std, train=train, val=val, test=test,
              gate=gate)
    owner = dict(zip(logs.video_row.tolist(), logs.uploader)) if logs.uploader is not None else {}
    videos = [{"id": k, "kind": "ugc", "ext_id": vstore.ids[r], "source": vstore.paths[r], "uploader": owner.get(r, "")}
              for k, r in enumerate(used.tolist())]
    return ugc, videos


def _pgc(cfg: AssembleConfig, pstore: FeatureStore, ppath: Path, track_index: dict[str, int], mpath: Path,
         music_features: np.ndarray) -> tuple[PGC, list[dict[str, Any]]]:
    """Paired segments (in store order), a seeded train/val split grouped by segment; and their videos.csv rows."""
    assert cfg.pgc_pairs is not None
    t = _read_csv(cfg.pgc_pairs, PAIR_COLUMNS, "PGC pairs", "--pgc-pairs", strict=True)
    seg_row, seg_track = _read_pairs(t, "segment", pstore, ppath, "extract the segments' features into the PGC "
                                     "store (python -m deccm.features videos) or drop these rows", track_index, mpath)
    used = np.unique(seg_row)
    if len(used) < 2:
        raise _problem(cfg.pgc_pairs, None, f"{len(used)} distinct segment(s) cannot fill PGC train and val",
                       "pair at least 2 distinct segments with tracks")
    seg_id = np.full(len(pstore), -1, dtype=np.int64)
    seg_id[used] = np.arange(len(used))
    seg = seg_id[seg_row]
    split = _split_groups(np.random.default_rng([cfg.seed, 3]), len(used),
                          _split_sizes(len(used), (cfg.pgc_val_fraction,)))[seg]
    tr, va = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    pgc = PGC(segment_features=np.asarray(pstore.features, dtype=np.float32)[used], music_features=music_features,
              train=PairRows(segment=seg[tr], music=seg_track[tr]), val=PairRows(segment=seg[va], music=seg_track[va]))
    rows = [{"id": k, "kind": "pgc", "ext_id": pstore.ids[r], "source": pstore.paths[r], "uploader": ""}
            for k, r in enumerate(used.tolist())]
    return pgc, rows


def _manifest(cfg: AssembleConfig, fp: dict[str, Any], tracks: _Tracks, vstore: FeatureStore, mstore: FeatureStore,
              has_uploaders: bool) -> dict[str, Any]:
    notes = dict(protocol.NOTES)
    if not has_uploaders:
        notes["prior"] = protocol.PRIOR_WITHOUT_UPLOADERS
    return {
        "name": cfg.name or DEFAULT_NAME,
        "provenance": "extracted",
        "description": ("Assembled by deccm.data.assemble from the user's own feature stores, usage logs and track "
                        "metadata. Logged choices are as observed (confounded by uploader taste where uploaders are "
                        "known); there is no test_oracle, since the true affinity of real data is unknown."),
        "genres": tracks.genres,
        "dims": _music_blocks(mstore.spec),
        "features": {"video": vstore.spec, "music": mstore.spec, "music_normalisation": mstore.normalisation},
        "source": {"module": "deccm.data.assemble", "fingerprint": fp["digest"], "version": VERSION,
                   "inputs": fp["inputs"], "options": fp["options"]},
        "confounder": _confounder(cfg, has_uploaders, tracks.has_genres),
        "splits": (f"train/val/test/gate over the distinct logged videos (seed {cfg.seed}, val {cfg.val_fraction:g}, "
                   f"test {cfg.test_fraction:g}, gate {cfg.gate_fraction:g}): a video's rows are all in one split"),
        "video_genre": "all zeros: usage logs carry no video genre (one derived from the logged track would leak the label)",
        "ids": {"tracks": "track id = row of the music store; tracks.csv source = 'id:<your track id>'",
                "videos": "video id = position among the logged videos in video-store order (videos.csv kind ugc); "
                          "PGC segment id = position among the paired segments in PGC-store order (kind pgc); "
                          "ext_id = your id, source = the file the features came from",
                "uploaders": "uploader id = position in the sorted distinct uploader names of the logs"},
        **notes,
    }


def _write(dest: Path, manifest: dict[str, Any], ugc: UGC, pgc: PGC | None, tracks: _Tracks,
           videos: list[dict[str, Any]], overwrite: bool) -> None:
    """Link the audio into a staged ``media/tracks/``, write everything atomically, then validate it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.media-", dir=dest.parent))  # same filesystem as dest
    try:
        tdir = stage / "tracks"
        tdir.mkdir()
        rows = [dict(r) for r in tracks.rows]
        for k, src in enumerate(tracks.audio):
            name = f"{k:05d}{src.suffix.lower()}"
            _link_or_copy(src, tdir / name)
            rows[k]["path"] = f"{MEDIA}/tracks/{name}"
        write_dataset(dest, manifest, ugc, pgc, tracks=rows, videos=videos, attach={MEDIA: stage}, overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report = check(read_dataset(dest))
    if not report.ok:  # every input was checked above, so this is a bug in this module: say so
        raise DatasetError(f"{dest}: the assembled dataset fails validation (please report this bug): "
                           + "; ".join(str(p) for p in report.problems[:MAX_SHOWN]))


def _confounder(cfg: AssembleConfig, has_uploaders: bool, has_genres: bool) -> dict[str, Any]:
    reasons = []
    if not has_uploaders:
        reasons.append(f"the logs ({cfg.logs}) have no uploader column, so every row's prior is the global genre share")
    if not has_genres:
        reasons.append(f"the tracks metadata ({cfg.tracks_meta}) gives no genre, so all tracks are in one group "
                       f"{UNKNOWN_GENRE!r}")
    if not reasons:
        return {"available": True}
    return {"available": False, "reason": "; ".join(reasons) + ": the uploader-taste adjustment has nothing to work with"}


def summary(root: str | Path) -> str:
    """A few lines about an assembled dataset: rows per split, tracks, genres, the confounder path."""
    m = read_manifest(root)
    c = m["counts"]
    conf = m.get("confounder", {})
    lines = [f"{root}: {c['train']} train / {c['val']} val / {c['test']} test / {c.get('gate', 0)} gate rows over {c['videos']} videos, "
             f"{c['tracks']} tracks",
             f"genres ({len(m['genres'])}): {', '.join(m['genres'])}"]
    if "pgc_train" in c:
        lines.append(f"PGC: {c['pgc_segments']} segments, {c['pgc_train']} train / {c['pgc_val']} val pairs")
    lines.append("confounder path: on (uploaders and genres known)" if conf.get("available")
                 else f"confounder path: OFF ({conf.get('reason', 'not recorded')})")
    return "\n".join(lines)
