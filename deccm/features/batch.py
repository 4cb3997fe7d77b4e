"""Extract a folder or manifest of media files into a feature store, incrementally and in parallel.

Each file is hashed, looked up in the content-hash cache, and extracted only when new;
results land in the cache as they finish, and the store is written once at the end.
A file that cannot be used is listed with its reason in ``failures.csv`` and skipped
(``strict`` stops instead). Music vectors are normalised with statistics fitted on this
run's items (the training catalog) unless given ones are passed as ``norm``.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from deccm import safeio
from deccm.features import audio, decode, runtime
from deccm.features.store import FeatureCache, FeatureStore, default_cache_dir, store_dir

log = logging.getLogger("deccm.features")

KIND_EXTENSIONS = {"videos": decode.VIDEO_EXTENSIONS, "music": decode.AUDIO_EXTENSIONS | decode.VIDEO_EXTENSIONS}


class StrictFailure(RuntimeError):
    """``strict`` mode met a file it could not use."""


@dataclass(frozen=True)
class Item:
    id: str
    path: Path


@dataclass
class Result:
    status: str  # "extracted" | "cached" | "failed"
    sha256: str | None
    vector: np.ndarray | None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    from_cache: bool = False
    content_failure: bool = False  # caused by the file's bytes, so worth caching


def collect_inputs(kind: str, inputs: str | os.PathLike | list[str | os.PathLike], ids: list[str] | None = None) -> list[Item]:
    """Items from a directory (recursive, by media extension), a manifest CSV (``id,path``, paths relative to it),
    one file, or a list of files (ids: given, else file stems). Ids must be unique."""
    if kind not in KIND_EXTENSIONS:
        raise ValueError(f"unknown kind {kind!r}; choose videos or music")
    if isinstance(inputs, (str, os.PathLike)):
        src = Path(inputs)
        if src.is_dir():
            if ids is not None:
                raise ValueError("ids can only be given with a list of files")
            exts = KIND_EXTENSIONS[kind]
            paths = sorted(p for p in src.rglob("*") if p.suffix.lower() in exts and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(src).parts))
            if not paths:
                raise ValueError(f"{src}: no {kind} files found (extensions: {', '.join(sorted(exts))})")
            items = [Item(p.stem, p) for p in paths]
        elif src.suffix.lower() == ".csv" and src.is_file():
            if ids is not None:
                raise ValueError("ids come from the manifest's id column; do not pass ids too")
            items = _read_manifest(src)
        elif src.exists():
            items = [Item(ids[0] if ids else src.stem, src)]
        else:
            raise ValueError(f"{src}: no such file or directory")
    else:
        paths = [Path(p) for p in inputs]
        if ids is not None and len(ids) != len(paths):
            raise ValueError(f"{len(ids)} ids for {len(paths)} files")
        items = [Item(ids[i] if ids is not None else p.stem, p) for i, p in enumerate(paths)]
    seen: dict[str, Path] = {}
    for it in items:
        if it.id in seen:
            raise ValueError(f"duplicate id {it.id!r} ({seen[it.id]} and {it.path}); give unique ids in a manifest CSV (id,path)")
        seen[it.id] = it.path
    return items


def _read_manifest(path: Path) -> list[Item]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "path"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: manifest needs columns id,path (missing {', '.join(sorted(missing))})")
        rows = [(r["id"].strip(), r["path"].strip()) for r in reader]
    bad = [i + 2 for i, (a, p) in enumerate(rows) if not a or not p]
    if bad:
        raise ValueError(f"{path}: empty id or path on line(s) {', '.join(map(str, bad[:10]))}")
    if not rows:
        raise ValueError(f"{path}: manifest has no rows")
    return [Item(a, path.parent / p) for a, p in rows]


def untrained_message(kind: str) -> str:
    """What an untrained spec means for the user, in one line."""
    if kind == "music":
        return ("the VGGish block runs with UNTRAINED (seeded random) weights: the embedding half of each music vector "
                "carries no learned meaning; give --vggish-weights for the published ones")
    return "the network runs with UNTRAINED (seeded random) weights: these features carry no learned visual meaning"


def make_extractor(kind: str, device: str = "auto", **options: Any):
    """The single-file extractor for ``kind`` (VideoExtractor or MusicExtractor) with its options."""
    if kind == "videos":
        from deccm.features.visual import VideoExtractor

        return VideoExtractor(device=device, **options)
    if kind == "music":
        return audio.MusicExtractor(device=device, **options)
    raise ValueError(f"unknown kind {kind!r}; choose videos or music")


def _lookup(path: Path, cache: FeatureCache | None) -> tuple[Result | None, str | None]:
    """Hash the file and answer from the cache when possible: (result or None, sha256 or None)."""
    try:
        sha = safeio.sha256_file(path)
    except FileNotFoundError:
        return Result("failed", None, None, "missing file"), None
    except IsADirectoryError:
        return Result("failed", None, None, "is a directory, not a file"), None
    except OSError as e:
        return Result("failed", None, None, f"unreadable: {e.strerror or e}"), None
    if cache is not None:
        vec = cache.get(sha)
        if vec is not None:
            return Result("cached", sha, vec, from_cache=True), sha
        reason = cache.get_failure(sha)
        if reason is not None:
            return Result("failed", sha, None, reason, from_cache=True, content_failure=True), sha
    return None, sha


class _Job:
    """The per-process extractor, built once and reused for every file."""

    def __init__(self, kind: str, device: str, options: dict[str, Any]):
        self.extractor = make_extractor(kind, device=device, **options)
        self.spec = self.extractor.spec
        self._extract = self.extractor.extract_with_notes if kind == "videos" else self.extractor.extract_raw_with_notes

    def run(self, path: Path, sha: str) -> Result:
        try:
            vec, notes = self._extract(path)
        except (decode.DecodeError, audio.FeatureError) as e:
            return Result("failed", sha, None, str(e), content_failure=True)
        except Exception as e:  # an extractor bug or resource problem: report it, retry next run
            log.debug("extraction of %s failed", path, exc_info=True)
            return Result("failed", sha, None, f"error: {type(e).__name__}: {e}")
        return Result("extracted", sha, vec, notes=tuple(notes))


_WORKER: _Job | None = None


def _init_worker(kind: str, device: str, options: dict[str, Any]) -> None:
    global _WORKER
    runtime.single_thread()
    _WORKER = _Job(kind, device, options)


def _run_in_worker(path: Path, sha: str) -> Result:
    assert _WORKER is not None
    return _WORKER.run(path, sha)


def extract_batch(kind: str, inputs: Path | list[Path], out: Path, *, ids: list[str] | None = None, workers: int = 1,
                  strict: bool = False, device: str = "auto", cache_dir: Path | None = None, use_cache: bool = True,
                  progress: bool = True, norm: tuple[np.ndarray, np.ndarray] | None = None, threads: int = 1,
                  **extractor_options: Any) -> FeatureStore:
    """Extract every input into ``out/features/<kind>/`` and return the store.

    Every worker runs one torch thread: a pool's processes each, and with ``workers=1``
    this process for the duration of the call (``threads`` raises that for an idle machine).

    ``norm`` (music only) gives normalisation stats to apply instead of fitting them on
    this run; ``extractor_options`` go to :class:`VideoExtractor` / :class:`MusicExtractor`.
    """
    if workers < 1 or threads < 1:
        raise ValueError("workers and threads must be >= 1")
    if norm is not None and kind != "music":
        raise ValueError("norm only applies to music features")
    items = collect_inputs(kind, inputs, ids)
    cache_root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    job = _Job(kind, device, extractor_options)  # also validates options before any work starts
    spec = job.spec
    cache = FeatureCache(cache_root, spec) if cache_root is not None else None
    if norm is not None:
        norm = (np.asarray(norm[0], np.float32), np.asarray(norm[1], np.float32))
        audio.apply_norm(np.zeros(spec["dims"], np.float32), *norm)
    if not spec["trained"]:
        log.warning("%s (spec %s): %s", spec["name"], spec["spec_id"], untrained_message(kind))

    results: list[Result | None] = [None] * len(items)
    counts = {"extracted": 0, "cached": 0, "failed": 0}
    bar = tqdm(total=len(items), unit="file", desc=f"{kind} ({spec['name']})", disable=not progress, dynamic_ncols=True)

    def record(i: int, res: Result) -> None:
        results[i] = res
        counts[res.status] += 1
        if res.from_cache and res.status == "failed":  # a remembered failure: no work redone either
            counts["cached"] += 1
        if cache is not None and not res.from_cache:  # written as each file finishes: a crash loses only those in flight
            if res.status == "extracted":
                cache.put(res.sha256, res.vector)
            elif res.content_failure:
                cache.put_failure(res.sha256, res.reason)
        for note in res.notes:
            log.warning("%s: %s", items[i].path, note)
        if res.status == "failed":
            log.warning("skipped %s: %s", items[i].path, res.reason)
            if strict:
                raise StrictFailure(f"{items[i].path}: {res.reason}")
        bar.update(1)
        bar.set_postfix(cached=counts["cached"], failed=counts["failed"], refresh=False)

    with bar, logging_redirect_tqdm():
        pending: list[tuple[int, str]] = []
        for i, it in enumerate(items):  # hashing and cache look-ups are cheap: done here, in order
            res, sha = _lookup(it.path, cache)
            if res is not None:
                record(i, res)
            else:
                pending.append((i, sha))
        if workers == 1 or len(pending) <= 1:
            with runtime.threads(threads):
                for i, sha in pending:
                    record(i, job.run(items[i].path, sha))
        else:
            del job  # free the main copy of the network; each worker loads its own
            ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can deadlock
            with cf.ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx, initializer=_init_worker,
                                        initargs=(kind, device, extractor_options)) as pool:
                futures = {pool.submit(_run_in_worker, items[i].path, sha): i for i, sha in pending}
                try:
                    for fut in cf.as_completed(futures):
                        record(futures[fut], fut.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    ok = [i for i, r in enumerate(results) if r is not None and r.status != "failed"]
    dims = spec["dims"]
    vectors = np.stack([results[i].vector for i in ok]).astype(np.float32) if ok else np.zeros((0, dims), np.float32)
    store = FeatureStore(
        kind=kind, ids=[items[i].id for i in ok], paths=[str(items[i].path) for i in ok],
        sha256=[results[i].sha256 for i in ok], features=vectors, spec=spec,
        failures=[(str(items[i].path), r.reason or "") for i, r in enumerate(results) if r and r.status == "failed"],
        failed_ids=[items[i].id for i, r in enumerate(results) if r and r.status == "failed"],
        run={"inputs": len(items), **counts, "workers": workers, "cache": "on" if cache_root else "off"},
    )
    if kind == "music":
        normalise(store, norm)
    store.save(store_dir(out, kind))
    log.info("%s: %d ok, %d failed (%d extracted, %d from cache) → %s", kind, len(ok), counts["failed"],
             counts["extracted"], counts["cached"], store_dir(out, kind))
    return store


def normalise(store: FeatureStore, norm: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Keep the raw vectors, fit (or apply given) z-score stats, and say which in ``store.normalisation``."""
    store.raw = store.features
    if norm is None:
        if len(store) == 0:
            store.normalisation = {**audio.NORMALISATION, "source": "none: no items to fit on"}
            return
        norm = audio.fit_norm(store.raw)
        source = f"fitted on the {len(store)} items of this run"
    else:
        source = "given"
    store.norm_mean, store.norm_std = norm
    store.features = audio.apply_norm(store.raw, *norm)
    store.normalisation = {**audio.NORMALISATION, "source": source, "count": len(store),
                           "mean_sha256": _array_sha(store.norm_mean), "std_sha256": _array_sha(store.norm_std)}


def _array_sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()
