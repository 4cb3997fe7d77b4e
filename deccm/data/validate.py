"""Every check a dataset must pass before anything trains or evaluates on it.

Each problem names the file, the first offending rows and the fix, so a user can
repair a dataset without reading this code. ``deccm data validate DIR`` prints the
summary table and every problem; :func:`load_dataset` (the one way to open a dataset
for use) runs the same checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deccm import safeio
from deccm.data.format import (
    MANIFEST,
    N_NEGATIVES,
    TRACKS_CSV,
    VIDEOS_CSV,
    Dataset,
    DatasetError,
    PairRows,
    RankRows,
    TrainRows,
    iter_arrays,
    read_dataset,
)

PRIOR_TOL = 1e-3  # |sum(prior) - 1| allowed per row
WEIGHT_TOL = 1e-6  # |sum(weights) - 1| allowed per split
MAX_ROWS_SHOWN = 5
CHUNK = 8192  # rows per block when scanning features (keeps mmap scans in memory bounds)


@dataclass
class Problem:
    file: str
    what: str
    fix: str
    rows: list[int] = field(default_factory=list)
    n_rows: int = 0

    def __str__(self) -> str:
        where = ""
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows)
            more = f" (+{self.n_rows - len(self.rows)} more)" if self.n_rows > len(self.rows) else ""
            where = f" row {shown}{more}:" if self.n_rows == 1 else f" rows {shown}{more}:"
        return f"{self.file}:{where} {self.what}. Fix: {self.fix}"


@dataclass
class Report:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    summary: list[tuple[str, str, str]] = field(default_factory=list)  # (part, size, detail)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, what: str, fix: str, bad_rows: np.ndarray | None = None) -> None:
        rows: list[int] = []
        n = 0
        if bad_rows is not None:
            idx = np.flatnonzero(bad_rows) if bad_rows.dtype == bool else np.asarray(bad_rows)
            n = int(idx.size)
            if n == 0:
                return
            rows = [int(i) for i in idx[:MAX_ROWS_SHOWN]]
        self.problems.append(Problem(str(self.root / file), what, fix, rows, n))

    def raise_if_failed(self) -> None:
        if self.problems:
            lines = "\n  ".join(str(p) for p in self.problems)
            raise DatasetError(f"{self.root}: {len(self.problems)} problem(s):\n  {lines}")

    def table(self) -> str:
        rows = [("part", "size", "detail")] + self.summary
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out = [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
        out.insert(1, "-" * (w0 + w1 + 4 + max(len(r[2]) for r in rows)))
        return "\n".join(out)


def _check_files(ds: Dataset, report: Report, verify_hashes: bool) -> None:
    """Shapes and dtypes on disk must equal the manifest's file table."""
    files = ds.manifest.get("files", {})
    for section in ("ugc", "pgc", "truth"):
        obj = getattr(ds, section)
        if obj is None:
            continue
        for rel, f, value in iter_arrays(obj, section):
            if value is None:
                continue
            entry = files.get(rel, {})
            if list(value.shape) != entry.get("shape") or str(value.dtype) != entry.get("dtype"):
                report.add(rel, f"shape {list(value.shape)} {value.dtype} does not match the manifest's "
                           f"{entry.get('shape')} {entry.get('dtype')}", "re-create the dataset; files were replaced by hand")
            elif str(value.dtype) != f.metadata["dtype"] or value.ndim != f.metadata["ndim"]:
                report.add(rel, f"expected a {f.metadata['ndim']}-d {f.metadata['dtype']} array, found {value.ndim}-d {value.dtype}",
                           "re-save the array with the documented dtype (see deccm.data.format)")
            if verify_hashes and "sha256" in entry and safeio.sha256_file(ds.root / rel) != entry["sha256"]:
                report.add(rel, "content differs from the sha256 recorded in the manifest",
                           "restore the original file or re-create the dataset")


def _check_features(report: Report, rel: str, x: np.ndarray, dim: int, what: str) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        report.add(rel, f"{what} features have shape {tuple(x.shape)}, the manifest says {dim} columns",
                   f"extract features at dim {dim} or fix dims in {MANIFEST}")
        return
    if x.shape[0] == 0:
        report.add(rel, f"no {what} features", "the dataset needs at least one row")
        return
    bad = np.zeros(x.shape[0], dtype=bool)
    for start in range(0, x.shape[0], CHUNK):
        block = np.asarray(x[start:start + CHUNK])
        bad[start:start + CHUNK] = ~np.isfinite(block).all(axis=1)
    report.add(rel, "NaN or inf in features", "re-extract these rows or drop them from every split", bad)


def _check_ids(report: Report, rel: str, ids: np.ndarray, n: int, kind: str) -> None:
    ids2 = ids.reshape(len(ids), -1) if ids.ndim > 1 else ids[:, None]
    bad = ((ids2 < 0) | (ids2 >= n)).any(axis=1)
    report.add(rel, f"{kind} id out of range [0, {n})", f"use ids that index the {kind} feature rows, or add the missing features", bad)


def _check_prior(report: Report, rel: str, prior: np.ndarray, g: int) -> None:
    p = prior.reshape(-1, prior.shape[-1]) if prior.ndim > 1 else prior[None, :]
    if p.shape[1] != g:
        report.add(rel, f"has {p.shape[1]} genre columns, the manifest lists {g} genres", "align the prior with the genre list")
        return
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(p.sum(axis=1) - 1) > PRIOR_TOL)
    report.add(rel, f"genre prior is not a distribution (negative, NaN, or sum != 1 within {PRIOR_TOL})",
               "normalise each row to sum to 1 (divide by its sum)", bad)


def _check_len(report: Report, base: str, rows: Any) -> int:
    n = len(rows)
    if n == 0:
        report.add(base, "split is empty", "generate or import at least one row for this split")
    for name, value in vars(rows).items():
        if value is not None and len(value) != n:
            report.add(f"{base}/{name}.npy", f"has {len(value)} rows, the split has {n}", "re-create the split so that all its arrays align")
    return n


def _check_train(report: Report, rows: TrainRows, nv: int, nm: int, g: int) -> None:
    base = "ugc/train"
    n = _check_len(report, base, rows)
    report.summary.append((base, str(n), f"{len(np.unique(rows.music))} distinct positives"))
    if n == 0:
        return
    _check_ids(report, f"{base}/video.npy", rows.video, nv, "video")
    _check_ids(report, f"{base}/music.npy", rows.music, nm, "music")
    _check_prior(report, f"{base}/prior.npy", rows.prior, g)
    vg = rows.video_genre
    if vg.ndim != 2 or vg.shape[1] != g:
        report.add(f"{base}/video_genre.npy", f"shape {vg.shape}, expected (N, {g}) multi-hot", "store one 0/1 column per genre")
    else:
        report.add(f"{base}/video_genre.npy", "multi-hot genre entries must be 0 or 1", "store genre membership as 0/1", (vg > 1).any(axis=1))
    p = rows.propensity
    report.add(f"{base}/propensity.npy", "propensity must be finite and in (0, 1]",
               "clip propensities to [eps, 1] before writing", ~np.isfinite(p) | (p <= 0) | (p > 1))


def _check_rank(report: Report, name: str, rows: RankRows, nv: int, nm: int, g: int) -> None:
    base = f"ugc/{name}"
    n = _check_len(report, base, rows)
    report.summary.append((base, str(n), f"{rows.negatives.shape[1] if rows.negatives.ndim == 2 else '?'} negatives/row"))
    if n == 0:
        return
    _check_ids(report, f"{base}/video.npy", rows.video, nv, "video")
    _check_ids(report, f"{base}/music.npy", rows.music, nm, "music")
    neg = rows.negatives
    if neg.ndim != 2 or neg.shape[1] < N_NEGATIVES:
        report.add(f"{base}/negatives.npy", f"has {neg.shape[1] if neg.ndim == 2 else 0} negatives per row, the protocol needs {N_NEGATIVES}",
                   f"sample {N_NEGATIVES} distinct negatives per row")
        return
    _check_ids(report, f"{base}/negatives.npy", neg, nm, "music")
    report.add(f"{base}/negatives.npy", "the row's positive track is among its own negatives",
               "resample that row's negatives excluding the positive", (neg == rows.music[:, None]).any(axis=1))
    s = np.sort(neg, axis=1)
    report.add(f"{base}/negatives.npy", "duplicate negatives in a row",
               "resample that row's negatives without replacement", (s[:, 1:] == s[:, :-1]).any(axis=1))
    w = rows.weight
    if (~np.isfinite(w) | (w < 0)).any():
        report.add(f"{base}/weight.npy", "weights must be finite and non-negative",
                   "recompute inverse-popularity weights from training counts", ~np.isfinite(w) | (w < 0))
    elif abs(w.sum() - 1.0) > WEIGHT_TOL:
        report.add(f"{base}/weight.npy", f"weights sum to {w.sum():.6g}, not 1 (the weighted HR/NDCG of §7 are sums, so they must be normalised)",
                   "divide the weights by their sum")
    if rows.prior is not None:
        _check_prior(report, f"{base}/prior.npy", rows.prior, g)


def _check_pairs(report: Report, name: str, rows: PairRows, ns: int, nm: int) -> None:
    base = f"pgc/{name}"
    n = _check_len(report, base, rows)
    report.summary.append((base, str(n), f"{len(np.unique(rows.music))} distinct songs"))
    if n:
        _check_ids(report, f"{base}/segment.npy", rows.segment, ns, "segment")
        _check_ids(report, f"{base}/music.npy", rows.music, nm, "music")


def check(ds: Dataset, verify_hashes: bool = False) -> Report:
    """Run every check; never raises for data problems, returns them in the report."""
    report = Report(ds.root)
    m = ds.manifest
    label = "SYNTHETIC data" if m.get("provenance") == "synthetic" else str(m.get("provenance"))
    report.summary.append(("provenance", label, str(m.get("name", ""))))
    dims = m.get("dims", {})
    g = len(m.get("genres", []))
    if g == 0:
        report.add(MANIFEST, "no genre names", "list the genre groups under 'genres'")
    _check_files(ds, report, verify_hashes)
    u = ds.ugc
    nv, nm = int(u.video_features.shape[0]), int(u.music_features.shape[0])
    report.summary.append(("ugc/video_features", str(nv), f"{u.video_features.shape[1]}-d"))
    report.summary.append(("ugc/music_features", str(nm), f"{u.music_features.shape[1]}-d " + "+".join(str(b["dim"]) for b in dims.get("music_blocks", []))))
    _check_features(report, "ugc/video_features.npy", u.video_features, int(dims.get("video", -1)), "video")
    _check_features(report, "ugc/music_features.npy", u.music_features, int(dims.get("music", -1)), "music")
    blocks = sum(int(b["dim"]) for b in dims.get("music_blocks", [])) if dims.get("music_blocks") else dims.get("music")
    if blocks != dims.get("music"):
        report.add(MANIFEST, f"music_blocks add up to {blocks}, dims.music is {dims.get('music')}", "make the block dims sum to the music dim")
    _check_prior(report, "ugc/prior_mean.npy", u.prior_mean, g)
    if u.music_genre is not None:
        mg = u.music_genre
        report.add("ugc/music_genre.npy", f"genre must be -1 (unknown) or in [0, {g})", "fix the genre index of these tracks",
                   (mg < -1) | (mg >= g))
        if len(mg) != nm:
            report.add("ugc/music_genre.npy", f"{len(mg)} entries for {nm} tracks", "give one genre per track")
    for name in ("music_norm_mean", "music_norm_std"):
        v = getattr(u, name)
        if v is not None and (v.shape != (u.music_features.shape[1],) or not np.isfinite(v).all()):
            report.add(f"ugc/{name}.npy", f"must be a finite ({u.music_features.shape[1]},) vector, found shape {v.shape}",
                       "save the normalisation statistics fitted on the training catalog")
    if u.music_norm_std is not None and (u.music_norm_std <= 0).any():
        report.add("ugc/music_norm_std.npy", "standard deviations must be positive", "floor them at a small epsilon when fitting")
    if nm <= N_NEGATIVES:
        report.add("ugc/music_features.npy", f"{nm} tracks cannot provide {N_NEGATIVES} distinct negatives plus a positive",
                   f"use a catalog of at least {N_NEGATIVES + 1} tracks")
    _check_train(report, u.train, nv, nm, g)
    for name, rows in u.rank_splits().items():
        _check_rank(report, name, rows, nv, nm, g)
    if ds.pgc is not None:
        p = ds.pgc
        ns = int(p.segment_features.shape[0])
        report.summary.append(("pgc/segment_features", str(ns), f"{p.segment_features.shape[1]}-d"))
        _check_features(report, "pgc/segment_features.npy", p.segment_features, int(dims.get("video", -1)), "segment")
        _check_features(report, "pgc/music_features.npy", p.music_features, int(dims.get("music", -1)), "music")
        if p.music_features.shape[0] != nm:
            report.add("pgc/music_features.npy", f"{p.music_features.shape[0]} tracks, UGC has {nm}: teacher and student must share one catalog (§2.3)",
                       "use the same track library (same ids) in both domains")
        _check_pairs(report, "train", p.train, ns, nm)
        _check_pairs(report, "val", p.val, ns, nm)
    if ds.truth is not None:
        report.summary.append(("truth", "yes", "synthetic latents (true affinity known)"))
    _check_media(ds, report, nm)
    return report


def _check_media(ds: Dataset, report: Report, n_tracks: int) -> None:
    """tracks.csv has one row per track; every ``path`` in the CSVs is a file inside the dataset."""
    if ds.tracks and len(ds.tracks) != n_tracks:
        report.add(TRACKS_CSV, f"{len(ds.tracks)} rows for {n_tracks} tracks", "give tracks.csv one row per track id")
    root = ds.root.resolve()
    for name, rows in ((TRACKS_CSV, ds.tracks), (VIDEOS_CSV, ds.videos)):
        paths = [r.get("path") or "" for r in rows]
        if not any(paths):
            continue
        bad = np.array([bool(p) and not ((root / p).resolve().is_relative_to(root) and (root / p).is_file()) for p in paths])
        report.add(name, "path is missing, or points outside the dataset directory",
                   "restore the media file under the dataset (paths are relative to its root)", bad)
        if bad.any():
            continue
        report.summary.append((name.removesuffix(".csv") + " media", str(sum(map(bool, paths))), "files present"))


def validate_dir(root: str | Path, verify_hashes: bool = True) -> Report:
    """Load without validating, then run every check (the CLI's entry point)."""
    return check(read_dataset(root), verify_hashes=verify_hashes)


def load_dataset(root: str | Path, validate: bool = True) -> Dataset:
    """Open a dataset dir; by default run every validation check and raise on the first problems."""
    ds = read_dataset(root)
    if validate:
        check(ds).raise_if_failed()
    return ds
