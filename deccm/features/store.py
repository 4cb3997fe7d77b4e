"""Feature stores on disk and the content-hash cache behind incremental extraction.

A store is one directory (``OUT/features/videos/`` or ``OUT/features/music/``)::

    features.npy      (N, D) float32, row i belongs to items.csv row i
    items.csv         row,id,path,sha256
    spec.json         format, kind, count, the extractor spec, normalisation, run summary
    failures.csv      id,path,reason for every input that was skipped
    raw.npy           (N, 256) float32 unnormalised music vectors          [music]
    norm_mean.npy     (256,) float32, features = (raw - mean) / std        [music]
    norm_std.npy      (256,) float32

It is written into a temp sibling and swapped in when complete, so a crash never leaves
a half-written store and never destroys the previous one.

The cache holds one ``.npy`` per (file content sha256, spec_id), written atomically as
each file finishes, so a crash loses at most the files in flight and a rerun, or a run
on a grown folder, only extracts what is new. Content-caused failures are cached too
(a corrupt file stays corrupt); unreadable or missing files are retried every run.
"""
from __future__ import annotations

import csv
import io as _io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deccm import config, safeio
from deccm.features.spec import spec_id

FORMAT = "deccm-features"
FORMAT_VERSION = 1
KINDS = ("videos", "music")
ITEMS_COLUMNS = ("row", "id", "path", "sha256")
FAILURES_COLUMNS = ("id", "path", "reason")


class StoreError(ValueError):
    """A store directory is missing, incomplete or inconsistent."""


@dataclass
class FeatureStore:
    """Features aligned with ids/paths, the spec that made them, and what was skipped and why."""

    kind: str
    ids: list[str]
    paths: list[str]
    sha256: list[str]
    features: np.ndarray
    spec: dict[str, Any]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed_ids: list[str] = field(default_factory=list)
    raw: np.ndarray | None = None
    norm_mean: np.ndarray | None = None
    norm_std: np.ndarray | None = None
    normalisation: dict[str, Any] | None = None
    run: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item_id: str) -> int:
        """Row of ``item_id`` in ``features``."""
        try:
            return self.ids.index(item_id)
        except ValueError:
            raise KeyError(f"no item {item_id!r} in this {self.kind} store") from None

    def save(self, dest: str | os.PathLike) -> Path:
        """Write the store directory ``dest`` atomically, replacing an older one only once complete."""
        dest = Path(dest)
        n, d = self.features.shape
        if not (len(self.ids) == len(self.paths) == len(self.sha256) == n) or d != self.spec["dims"]:
            raise StoreError(f"inconsistent store: {n}x{d} features, {len(self.ids)} ids, spec dims {self.spec['dims']}")
        with safeio.atomic_dir(dest, overwrite=True) as tmp:
            safeio.save_npy(tmp / "features.npy", self.features.astype(np.float32, copy=False))
            safeio.write_text(tmp / "items.csv", _csv(ITEMS_COLUMNS, [(i, a, p, s) for i, (a, p, s) in
                                                                   enumerate(zip(self.ids, self.paths, self.sha256))]))
            safeio.write_text(tmp / "failures.csv", _csv(FAILURES_COLUMNS, [(i, p, r) for i, (p, r) in
                                                                         zip(self.failed_ids, self.failures)]))
            if self.raw is not None:
                safeio.save_npy(tmp / "raw.npy", self.raw.astype(np.float32, copy=False))
            if self.norm_mean is not None and self.norm_std is not None:
                safeio.save_npy(tmp / "norm_mean.npy", self.norm_mean.astype(np.float32, copy=False))
                safeio.save_npy(tmp / "norm_std.npy", self.norm_std.astype(np.float32, copy=False))
            safeio.write_json(tmp / "spec.json", {
                "format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "count": n, "dims": d,
                "failed": len(self.failures), "spec": self.spec, "normalisation": self.normalisation, "run": self.run,
            })
        return dest


def merge_stores(stores: list[FeatureStore]) -> FeatureStore:
    """One store from several of the same kind and spec (e.g. the shards of a parallel extraction).

    Music stores are merged on their raw vectors (``raw``): normalisation statistics must be
    fitted on the whole catalog again (``deccm.features.batch.normalise``). Ids must be unique.
    """
    if not stores:
        raise StoreError("nothing to merge: no stores given")
    first = stores[0]
    for st in stores[1:]:
        if st.kind != first.kind or st.spec.get("spec_id") != first.spec.get("spec_id"):
            raise StoreError(f"cannot merge a {st.kind} store of spec {st.spec.get('spec_id')} into a {first.kind} store of spec "
                             f"{first.spec.get('spec_id')}: re-extract the shards with the same settings")
    ids = [i for st in stores for i in st.ids]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise StoreError(f"the same id in several shards: {', '.join(dup[:5])}; give every file a unique id")
    music = first.kind == "music"
    parts = [st.raw if music and st.raw is not None else st.features for st in stores]
    return FeatureStore(kind=first.kind, ids=ids, paths=[p for st in stores for p in st.paths],
                        sha256=[h for st in stores for h in st.sha256], features=np.concatenate(parts).astype(np.float32),
                        spec=first.spec, failures=[f for st in stores for f in st.failures],
                        failed_ids=[f for st in stores for f in st.failed_ids],
                        run={"merged": len(stores), **{k: sum(int(st.run.get(k, 0)) for st in stores)
                                                       for k in ("inputs", "extracted", "cached", "failed")}})


def _csv(columns: tuple[str, ...], rows: list[tuple]) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != columns:
            raise StoreError(f"{path}: expected columns {','.join(columns)}, found {','.join(reader.fieldnames or ())}")
        return list(reader)


def store_dir(out: str | os.PathLike, kind: str) -> Path:
    """Where ``--out DIR`` puts a kind's store: ``DIR/features/<kind>``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return Path(out) / "features" / kind


def load_store(path: str | os.PathLike, kind: str | None = None) -> FeatureStore:
    """Load a store: its own directory, or an ``--out`` directory (``kind`` picks videos/music when both exist)."""
    path = Path(path)
    if not (path / "spec.json").is_file():
        candidates = [k for k in ((kind,) if kind else KINDS) if (store_dir(path, k) / "spec.json").is_file()]
        if len(candidates) != 1:
            what = f"a {kind} store" if kind else "exactly one store"
            raise StoreError(f"{path}: expected {what} (spec.json here or under features/{kind or '<videos|music>'}/)"
                             + (f"; found {', '.join(candidates)}: pass kind" if candidates else ""))
        path = store_dir(path, candidates[0])
    meta = json.loads((path / "spec.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise StoreError(f"{path}/spec.json: not a {FORMAT} v{FORMAT_VERSION} store")
    if kind and meta["kind"] != kind:
        raise StoreError(f"{path} holds {meta['kind']} features, not {kind}")
    spec = meta["spec"]
    if spec_id(spec) != spec.get("spec_id"):
        raise StoreError(f"{path}/spec.json: spec_id does not match the spec (edited by hand?)")
    features = safeio.load_npy(path / "features.npy")
    items = _read_csv(path / "items.csv", ITEMS_COLUMNS)
    failures = _read_csv(path / "failures.csv", FAILURES_COLUMNS)
    if features.shape != (len(items), spec["dims"]):
        raise StoreError(f"{path}: features.npy is {features.shape}, expected ({len(items)}, {spec['dims']}) "
                         "from items.csv and the spec")
    opt = {name: safeio.load_npy(path / f"{name}.npy") if (path / f"{name}.npy").exists() else None
           for name in ("raw", "norm_mean", "norm_std")}
    return FeatureStore(kind=meta["kind"], ids=[r["id"] for r in items], paths=[r["path"] for r in items],
                        sha256=[r["sha256"] for r in items], features=features, spec=spec,
                        failures=[(r["path"], r["reason"]) for r in failures], failed_ids=[r["id"] for r in failures],
                        normalisation=meta.get("normalisation"), run=meta.get("run") or {}, **opt)


def default_cache_dir() -> Path:
    """``$DECCM_HOME/cache/features``."""
    return config.state_path("cache", "features")


class FeatureCache:
    """One vector (or one failure reason) per file content, under the extractor's spec_id."""

    def __init__(self, root: str | os.PathLike, spec: dict[str, Any]):
        self.dir = Path(root) / spec["kind"] / spec["spec_id"]
        self.dims = int(spec["dims"])
        if not (self.dir / "spec.json").exists():
            safeio.write_json(self.dir / "spec.json", spec)  # so a human can tell cache dirs apart

    def _path(self, sha: str, suffix: str) -> Path:
        return self.dir / sha[:2] / f"{sha}{suffix}"

    def get(self, sha: str) -> np.ndarray | None:
        p = self._path(sha, ".npy")
        if not p.exists():
            return None
        try:
            vec = safeio.load_npy(p)
        except (OSError, ValueError):
            return None  # unreadable entry: recompute and overwrite
        return vec if vec.shape == (self.dims,) and np.isfinite(vec).all() else None

    def put(self, sha: str, vec: np.ndarray) -> None:
        safeio.save_npy(self._path(sha, ".npy"), np.asarray(vec, dtype=np.float32))

    def get_failure(self, sha: str) -> str | None:
        p = self._path(sha, ".failed.txt")
        return p.read_text(encoding="utf-8").strip() if p.exists() else None

    def put_failure(self, sha: str, reason: str) -> None:
        safeio.write_text(self._path(sha, ".failed.txt"), reason + "\n")
