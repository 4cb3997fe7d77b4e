"""The native dataset format: a directory with ``dataset.json`` and plain ``.npy`` arrays.

Layout (every array is numeric and loaded with ``allow_pickle=False``)::

    dataset.json                      manifest: version, provenance, dims, counts, genres,
                                      file shapes/dtypes/sha256, generator or source info
    tracks.csv                        id, title, artist, genre, source, licence, copyright, tags, path
                                      (licence: a short name such as GPL-2+, "" = unknown;
                                      deccm.data.licences)
    videos.csv                        free columns, first ``id`` (e.g. path, uploader) [optional]
    media/...                         media files referenced by the CSVs            [optional]
    ugc/video_features.npy            (N_video, D_v) float32
    ugc/music_features.npy            (N_music, D_m) float32, blocks as in manifest dims
    ugc/music_genre.npy               (N_music,) int64 genre group, -1 = unknown   [optional]
    ugc/prior_mean.npy                (G,) float32 mean uploader prior over train rows
    ugc/music_norm_{mean,std}.npy     (D_m,) float32: music_features = (raw - mean) / std,
                                      fitted on the training catalog; serving applies the
                                      same transform to a new track                 [optional]
    ugc/train/{video,music}.npy       (N,) int64 video id, positive track id
    ugc/train/video_genre.npy         (N, G) uint8 multi-hot genres of the video
    ugc/train/prior.npy               (N, G) float32 uploader genre preference d_b
    ugc/train/propensity.npy          (N,) float32 in (0, 1], for IPS
    ugc/train/uploader.npy            (N,) int64                                   [optional]
    ugc/<split>/{video,music}.npy     split in val, test, test_oracle, gate (the last two optional)
    ugc/<split>/negatives.npy         (N, 100) int64 sampled negatives, positive excluded
    ugc/<split>/weight.npy            (N,) float64 inverse-popularity weight, sums to 1
    ugc/<split>/prior.npy             (N, G) float32                               [optional]
    pgc/segment_features.npy          (N_seg, D_v) float32     [the whole pgc/ is optional]
    pgc/music_features.npy            (N_music, D_m) float32
    pgc/{train,val}/{segment,music}.npy  (N,) int64
    truth/...                         synthetic data only: latents behind the true affinity

``gate`` is a split like ``val`` on clips of its own, held out from early stopping: the
promotion gate scores champion and challenger on it (``deccm.gate``, docs/method.md §7 "The promotion gate").
It is optional within format version 1, so older datasets stay readable; without it the
gate falls back to ``val`` and says so in its reasons.

Names follow the method (``docs/method.md`` §2); ``deccm.data.legacy`` converts the
authors' pickled layout into this one.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io as _io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deccm import safeio

FORMAT = "deccm-dataset"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PROVENANCES = ("synthetic", "imported-legacy", "extracted")
MANIFEST = "dataset.json"
TRACKS_CSV = "tracks.csv"
TRACKS_CSV_COLUMNS = ("id", "title", "artist", "genre", "source", "licence", "copyright", "tags", "path")
VIDEOS_CSV = "videos.csv"
MEDIA_DIR = "media"  # media files the CSVs reference; the only folder the demo serves from
N_NEGATIVES = 100


def _arr(dtype: str, ndim: int, optional: bool = False, mmap: bool = False) -> Any:
    """Declare one array field: its dtype, rank, whether it may be absent, whether to mmap."""
    meta = {"dtype": dtype, "ndim": ndim, "optional": optional, "mmap": mmap}
    return field(default=None, metadata=meta) if optional else field(metadata=meta)


@dataclass
class TrainRows:
    """UGC training rows: one uploaded video and the track its uploader picked (§2.2)."""

    video: np.ndarray = _arr("int64", 1)
    music: np.ndarray = _arr("int64", 1)
    video_genre: np.ndarray = _arr("uint8", 2)
    prior: np.ndarray = _arr("float32", 2)
    propensity: np.ndarray = _arr("float32", 1)
    uploader: np.ndarray | None = _arr("int64", 1, optional=True)

    def __len__(self) -> int:
        return len(self.video)


@dataclass
class RankRows:
    """Val/test rows of the sampled protocol: 1 positive + 100 fixed negatives (§7)."""

    video: np.ndarray = _arr("int64", 1)
    music: np.ndarray = _arr("int64", 1)
    negatives: np.ndarray = _arr("int64", 2)
    weight: np.ndarray = _arr("float64", 1)
    prior: np.ndarray | None = _arr("float32", 2, optional=True)
    uploader: np.ndarray | None = _arr("int64", 1, optional=True)

    def __len__(self) -> int:
        return len(self.video)

    def candidates(self) -> np.ndarray:
        """(N, 101) track ids, column 0 the positive: the matrix the metrics rank."""
        return np.concatenate([self.music[:, None], self.negatives], axis=1)


@dataclass
class PairRows:
    """PGC rows: a music-video segment and the song it belongs to (§2.3)."""

    segment: np.ndarray = _arr("int64", 1)
    music: np.ndarray = _arr("int64", 1)

    def __len__(self) -> int:
        return len(self.segment)


@dataclass
class UGC:
    video_features: np.ndarray = _arr("float32", 2, mmap=True)
    music_features: np.ndarray = _arr("float32", 2)
    prior_mean: np.ndarray = _arr("float32", 1)
    music_genre: np.ndarray | None = _arr("int64", 1, optional=True)
    music_norm_mean: np.ndarray | None = _arr("float32", 1, optional=True)
    music_norm_std: np.ndarray | None = _arr("float32", 1, optional=True)
    train: TrainRows = field(default=None, metadata={"split": TrainRows})  # type: ignore[assignment]
    val: RankRows = field(default=None, metadata={"split": RankRows})  # type: ignore[assignment]
    test: RankRows = field(default=None, metadata={"split": RankRows})  # type: ignore[assignment]
    test_oracle: RankRows | None = field(
        default=None, metadata={"split": RankRows, "optional": True}
    )
    gate: RankRows | None = field(default=None, metadata={"split": RankRows, "optional": True})

    def rank_splits(self) -> dict[str, RankRows]:
        out = {"val": self.val, "test": self.test}
        if self.test_oracle is not None:
            out["test_oracle"] = self.test_oracle
        if self.gate is not None:
            out["gate"] = self.gate
        return out


@dataclass
class PGC:
    segment_features: np.ndarray = _arr("float32", 2, mmap=True)
    music_features: np.ndarray = _arr("float32", 2)
    train: PairRows = field(default=None, metadata={"split": PairRows})  # type: ignore[assignment]
    val: PairRows = field(default=None, metadata={"split": PairRows})  # type: ignore[assignment]


@dataclass
class Truth:
    """What only a synthetic dataset knows: the latents behind the true affinity.

    affinity(v, m) = (z_v W) · z_m / sqrt(k), with z_v, z_m the content latents and W a
    fixed (k, k) matrix; ``deccm.data.synth`` documents how the observed rows depend on it.
    """

    video_content: np.ndarray = _arr("float32", 2)
    music_content: np.ndarray = _arr("float32", 2)
    affinity_map: np.ndarray = _arr("float32", 2)
    uploader_preference: np.ndarray = _arr("float32", 2)
    genre_popularity: np.ndarray = _arr("float32", 1)

    def affinity(self, videos: np.ndarray, tracks: np.ndarray | None = None) -> np.ndarray:
        """True affinity of ``videos`` (N,) to ``tracks`` (N, C) or, if None, the catalog (N, M)."""
        k = self.video_content.shape[1]
        q = np.asarray(self.video_content[videos], dtype=np.float32) @ self.affinity_map  # (N, k)
        if tracks is None:
            return (q @ self.music_content.T) / np.sqrt(k)  # (N, M)
        return np.einsum("nk,nck->nc", q, self.music_content[tracks]) / np.sqrt(k)  # (N, C)


@dataclass
class Dataset:
    root: Path
    manifest: dict[str, Any]
    ugc: UGC
    pgc: PGC | None = None
    truth: Truth | None = None
    tracks: list[dict[str, str]] = field(default_factory=list)
    videos: list[dict[str, str]] = field(default_factory=list)

    @property
    def genres(self) -> list[str]:
        return list(self.manifest["genres"])

    @property
    def n_genres(self) -> int:
        return len(self.manifest["genres"])

    @property
    def n_tracks(self) -> int:
        return int(self.ugc.music_features.shape[0])

    def feature_blocks(self, kind: str) -> list[int]:
        """Sizes of the feature blocks of ``kind`` ("video" or "music") in column order, as the extractor
        recorded them (e.g. CNN frames then motion); one block when the layout is not recorded."""
        dim = int((self.ugc.video_features if kind == "video" else self.ugc.music_features).shape[1])
        if kind == "music":
            sizes = [int(b["dim"]) for b in self.manifest.get("dims", {}).get("music_blocks", [])]
        else:
            blocks = (self.manifest.get("features", {}).get("video") or {}).get("blocks") or []
            sizes = [int(b["stop"]) - int(b["start"]) for b in blocks if "stop" in b]
        return sizes if sizes and sum(sizes) == dim else [dim]

    @property
    def is_synthetic(self) -> bool:
        return self.manifest.get("provenance") == "synthetic"

    @property
    def manifest_hash(self) -> str:
        """Identity of the data: sha256 of ``dataset.json`` (which holds every file's sha256)."""
        return hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()


SECTIONS: dict[str, type] = {"ugc": UGC, "pgc": PGC, "truth": Truth}


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names file, row and fix."""


# --------------------------------------------------------------------------- writing


def _array_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "dtype" in f.metadata]


def _split_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "split" in f.metadata]


def iter_arrays(obj: Any, prefix: str) -> list[tuple[str, dataclasses.Field, Any]]:
    """(relative path, field, value) for every array of a section, splits included."""
    out = []
    for f in _array_fields(type(obj)):
        out.append((f"{prefix}/{f.name}.npy", f, getattr(obj, f.name)))
    for f in _split_fields(type(obj)):
        sub = getattr(obj, f.name)
        if sub is not None:
            out.extend(iter_arrays(sub, f"{prefix}/{f.name}"))
    return out


def write_dataset(
    dest: str | Path,
    manifest: dict[str, Any],
    ugc: UGC,
    pgc: PGC | None = None,
    truth: Truth | None = None,
    tracks: list[dict[str, Any]] | None = None,
    videos: list[dict[str, Any]] | None = None,
    attach: dict[str, Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a complete dataset atomically: built in a temp dir, renamed into place.

    ``manifest`` supplies name, provenance, genres, description and any generator, source
    or feature-extractor info; dims, counts, version and the file table are filled in here.
    ``attach`` maps a sub-directory name (e.g. ``"media"``) to a directory that is moved
    into the dataset, so media files and the arrays that describe them appear together.
    """
    dest = Path(dest)
    with safeio.atomic_dir(dest, overwrite=overwrite) as tmp:
        files: dict[str, Any] = {}
        for section, obj in (("ugc", ugc), ("pgc", pgc), ("truth", truth)):
            if obj is None:
                continue
            for rel, f, value in iter_arrays(obj, section):
                if value is None:
                    continue
                arr = np.ascontiguousarray(value, dtype=f.metadata["dtype"])
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                safeio.save_npy(path, arr)
                files[rel] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": safeio.sha256_file(path)}
        if tracks:
            _write_csv(tmp / TRACKS_CSV, tracks, TRACKS_CSV_COLUMNS)
        if videos:
            _write_csv(tmp / VIDEOS_CSV, videos, tuple(videos[0].keys()))
        for name, src in (attach or {}).items():
            shutil.move(str(src), str(tmp / name))
        full = complete_manifest(manifest, ugc, pgc, files)
        safeio.write_json(tmp / MANIFEST, full)
    return dest


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in columns})
    safeio.write_text(path, buf.getvalue())


def complete_manifest(manifest: dict[str, Any], ugc: UGC, pgc: PGC | None, files: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    out.update(manifest)
    if out.get("provenance") not in PROVENANCES:
        raise ValueError(f"manifest provenance must be one of {PROVENANCES}, got {out.get('provenance')!r}")
    out["synthetic"] = out["provenance"] == "synthetic"
    dims = dict(out.get("dims", {}))
    dims["video"] = int(ugc.video_features.shape[1])
    dims["music"] = int(ugc.music_features.shape[1])
    dims.setdefault("music_blocks", [{"name": "music", "dim": dims["music"]}])
    dims["genres"] = len(out["genres"])
    out["dims"] = dims
    counts = {
        "videos": int(ugc.video_features.shape[0]),
        "tracks": int(ugc.music_features.shape[0]),
        "train": len(ugc.train),
        **{name: len(rows) for name, rows in ugc.rank_splits().items()},
    }
    if pgc is not None:
        counts.update(pgc_segments=int(pgc.segment_features.shape[0]), pgc_train=len(pgc.train), pgc_val=len(pgc.val))
    out["counts"] = counts
    out["negatives_per_row"] = int(ugc.val.negatives.shape[1])
    out["files"] = files
    return out


# --------------------------------------------------------------------------- reading


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory. Fix: create one with `deccm data synth {root}` or import one.")
    if not path.is_file():
        raise DatasetError(f"{path}: missing manifest. Fix: point at a directory written by deccm (it has a dataset.json).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e}). Fix: restore the file or re-create the dataset.") from e
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: 'format' is {manifest.get('format')!r}, expected {FORMAT!r}. Fix: this is not a deccm dataset.")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise DatasetError(
            f"{path}: format_version {version!r} is unknown to this deccm (knows {list(SUPPORTED_VERSIONS)}). "
            "Fix: upgrade deccm, or re-create the dataset with this version."
        )
    return manifest


def _read_section(root: Path, cls: type, prefix: str, files: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in _array_fields(cls):
        rel = f"{prefix}/{f.name}.npy"
        if rel not in files:
            if not f.metadata["optional"]:
                raise DatasetError(f"{root / rel}: required array missing from the manifest's file table. Fix: re-create the dataset.")
            kwargs[f.name] = None
            continue
        path = root / rel
        if not path.is_file():
            raise DatasetError(f"{path}: listed in {MANIFEST} but missing on disk. Fix: restore it or re-create the dataset.")
        try:
            kwargs[f.name] = safeio.load_npy(path, mmap=f.metadata["mmap"])
        except ValueError as e:
            raise DatasetError(f"{path}: cannot be read without pickle ({e}). Fix: re-save it as a numeric array.") from e
    for f in _split_fields(cls):
        sub_prefix = f"{prefix}/{f.name}"
        if not any(k.startswith(sub_prefix + "/") for k in files):
            if not f.metadata.get("optional"):
                raise DatasetError(f"{root / sub_prefix}: split '{f.name}' is missing. Fix: re-create the dataset with that split.")
            kwargs[f.name] = None
            continue
        kwargs[f.name] = _read_section(root, f.metadata["split"], sub_prefix, files)
    return cls(**kwargs)


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_dataset(root: str | Path) -> Dataset:
    """Open a dataset dir without running the checks (``deccm.data.load_dataset`` validates too)."""
    root = Path(root)
    manifest = read_manifest(root)
    files = manifest.get("files", {})
    sections = {
        name: (_read_section(root, cls, name, files) if any(k.startswith(name + "/") for k in files) else None)
        for name, cls in SECTIONS.items()
    }
    if sections["ugc"] is None:
        raise DatasetError(f"{root / MANIFEST}: no ugc/ arrays listed. Fix: every dataset needs the UGC part.")
    return Dataset(root=root, manifest=manifest, tracks=read_csv(root / TRACKS_CSV), videos=read_csv(root / VIDEOS_CSV), **sections)
