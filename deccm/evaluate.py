"""Score models on a split: the authors' sampled protocol, full-catalog ranking, bias metrics.

``python -m deccm.evaluate RUN --data DIR`` prints a table and writes JSON;
``--compare A B …`` puts several models (run dirs, or ``popularity``) side by side on the
same rows with bootstrap 95% intervals over the split's clips (a clip with several rows,
as in the demo corpus's ``test_oracle``, is resampled whole). On synthetic data every metric is
also computed on ``test_oracle`` and against the true affinity.

Protocols (docs/method.md §7): each row ranks its positive among 100 fixed
negatives; HR@K/NDCG@K are reported popularity-weighted (the authors' numbers, weights
summing to 1) and unweighted, K ∈ {10, 15, 20, 25}. Ties count against the positive.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deccm import config, safeio, metrics
from deccm import logsetup as _log
from deccm.data import Dataset, DatasetError, RankRows, load_dataset
from deccm.runs import RunError, check_data, read_config
from deccm.serve import Ranker, load_ranker, popularity_ranker

log = logging.getLogger(__name__)
KS = (10, 15, 20, 25)
BIAS_K = 10
HEAD_FRACTION = 0.2  # the 20% most-picked tracks are the head; the rest is the tail
CHUNK = 2048


@dataclass
class SplitResult:
    """Point values of every metric, plus per-row contributions for the ones with intervals."""

    model: str
    split: str
    values: dict[str, float] = field(default_factory=dict)
    per_row: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    top: np.ndarray | None = None  # (N, bias_k) full-catalog top track ids per row, best first
    videos: np.ndarray | None = None  # (N,) each row's clip: the bootstrap resamples clips


def _head_tail(ds: Dataset) -> tuple[np.ndarray, int]:
    """(tail mask over tracks, most popular genre) from training positives only."""
    counts = np.bincount(ds.ugc.train.music, minlength=ds.n_tracks)
    order = np.argsort(-counts, kind="stable")
    tail = np.ones(ds.n_tracks, dtype=bool)
    tail[order[: max(1, int(round(HEAD_FRACTION * ds.n_tracks)))]] = False
    top_genre = -1
    if ds.ugc.music_genre is not None:
        g = ds.ugc.music_genre[ds.ugc.train.music]
        top_genre = int(np.bincount(g[g >= 0], minlength=ds.n_genres).argmax())
    return tail, top_genre


def split_rows(ds: Dataset, split: str) -> RankRows:
    splits = ds.ugc.rank_splits()
    if split not in splits:
        raise DatasetError(f"{ds.root}: no split '{split}' (has {sorted(splits)}). Fix: pick one of those with --split.")
    return splits[split]


def sampled_scores(q: np.ndarray, p: np.ndarray, rows: RankRows) -> np.ndarray:
    """(N, 101) scores of each row's candidates, column 0 the positive: q_i · p_c."""
    return np.einsum("nd,ncd->nc", q, p[rows.candidates()])


def sampled_hit_rate(ranker: Ranker, ds: Dataset, split: str, k: int) -> float:
    """Popularity-weighted HR@k of the sampled protocol on ``split`` (what training validates with)."""
    rows = split_rows(ds, split)
    q = ranker.video_vectors(ds.ugc.video_features[rows.video])
    s = sampled_scores(q, ranker.music_vectors(ds.ugc.music_features), rows)
    return metrics.hit_rate(metrics.positive_rank(s), k, rows.weight)


def evaluate_split(ranker: Ranker, ds: Dataset, split: str, ks: tuple[int, ...] = KS, bias_k: int = BIAS_K) -> SplitResult:
    """Every metric of one model on one split (rows × candidates and rows × catalog)."""
    rows = split_rows(ds, split)
    res = SplitResult(ranker.name, split, videos=np.asarray(rows.video))
    q = ranker.video_vectors(ds.ugc.video_features[rows.video])  # (N, D)
    p = ranker.music_vectors(ds.ugc.music_features)  # (M, D)
    cand = rows.candidates()  # (N, 101)
    s = sampled_scores(q, p, rows)  # (N, 101), column 0 the positive
    r = metrics.positive_rank(s)
    for k in ks:
        res.per_row[f"HR_w@{k}"] = (metrics.hit_vector(r, k), rows.weight)
        res.per_row[f"NDCG_w@{k}"] = (metrics.ndcg_vector(r, k), rows.weight)
    for k in ks:
        res.per_row[f"HR@{k}"] = (metrics.hit_vector(r, k), None)
        res.per_row[f"NDCG@{k}"] = (metrics.ndcg_vector(r, k), None)

    # full catalog, in row chunks: (chunk, M) scores at a time
    cat_rank = np.empty(len(rows), dtype=np.int64)
    top = np.empty((len(rows), min(bias_k, ds.n_tracks)), dtype=np.int64)
    for a in range(0, len(rows), CHUNK):
        full = q[a:a + CHUNK] @ p.T
        cat_rank[a:a + CHUNK] = metrics.catalog_rank(full, rows.music[a:a + CHUNK])
        top[a:a + CHUNK] = metrics.top_k(full, top.shape[1])
    for k in (10, 25):
        res.per_row[f"Recall@{k}"] = (metrics.hit_vector(cat_rank, k), None)
    res.per_row["MRR"] = (metrics.reciprocal_rank_vector(cat_rank), None)
    res.top = top
    res.values["MedR"] = metrics.median_rank(cat_rank)

    tail, top_genre = _head_tail(ds)
    res.values[f"coverage@{bias_k}"] = metrics.catalog_coverage(top, ds.n_tracks)
    res.values[f"Gini@{bias_k}"] = metrics.gini(top, ds.n_tracks)
    res.per_row[f"tail_share@{bias_k}"] = (metrics.tail_share_vector(top, tail), None)
    if ds.ugc.music_genre is not None:
        genres = ds.ugc.music_genre[top]  # (N, K)
        history = rows.prior if rows.prior is not None else np.broadcast_to(ds.ugc.prior_mean, (len(rows), ds.n_genres))
        res.values[f"C_KL@{bias_k}"] = metrics.calibration_kl(np.asarray(history, dtype=np.float64), genres, ds.n_genres)
        res.per_row[f"top_genre_share@{bias_k}"] = (metrics.genre_share_vector(genres, top_genre), None)
        # miscalibration against the split's own positives: KL(genre mix of positives ‖ genre mix of all top-K slots)
        pos_mix = np.bincount(ds.ugc.music_genre[rows.music], minlength=ds.n_genres)[None, :].astype(np.float64)
        res.values[f"genre_KL@{bias_k}"] = metrics.calibration_kl(pos_mix, genres.reshape(1, -1), ds.n_genres)
        res.values["top_genre_catalog_share"] = float(np.mean(ds.ugc.music_genre == top_genre))
    if ds.truth is not None:
        res.values["spearman_truth"] = metrics.rowwise_spearman(s, ds.truth.affinity(rows.video, cand))
    for name, (v, w) in res.per_row.items():
        res.values[name] = float(np.sum(v * w) / np.sum(w)) if w is not None else float(v.mean())
    return res


def taste_probe(ranker: Ranker, ds: Dataset, split: str = "test", lam: float = 1e-3) -> float:
    """How much the model's video vectors know about the uploader's genre taste: a linear probe's held-out R².

    Target per row: the uploader's true genre preference where the data knows it (synthetic
    ``truth``), else the row's leave-one-out prior. The probe is fitted on the training
    rows' video vectors and scored on ``split``'s rows (other videos). A matcher that
    learned the taste as content (the backdoor of docs/method.md §2.1) scores high.
    """
    train, rows = ds.ugc.train, split_rows(ds, split)

    def target(r: Any) -> np.ndarray:
        if ds.truth is not None and r.uploader is not None:
            return np.asarray(ds.truth.uploader_preference)[r.uploader]
        if r.prior is None:
            raise DatasetError(f"{ds.root}: split {split!r} has no uploader prior to probe for. Fix: use data with uploaders.")
        return np.asarray(r.prior)

    x_fit = ranker.video_vectors(ds.ugc.video_features[train.video])
    x_eval = ranker.video_vectors(ds.ugc.video_features[rows.video])
    return metrics.probe_r2(x_fit, target(train), x_eval, target(rows), lam)


def add_intervals(results: list[SplitResult], n_boot: int, seed: int = 0) -> None:
    """Bootstrap 95% intervals over clips for every per-row metric (same resamples for every model).

    Rows are resampled by their clip, so a split with several picks per clip (the demo
    corpus's ``test_oracle``) does not count its copies as independent evidence."""
    for res in results:
        for name, (v, w) in res.per_row.items():
            res.intervals[name] = metrics.bootstrap_ci(v, w, n_boot=n_boot, seed=seed, groups=res.videos)


def metric_names(results: list[SplitResult]) -> list[str]:
    names: list[str] = []
    for res in results:
        names.extend(n for n in res.values if n not in names)
    return names


def format_table(results: list[SplitResult]) -> str:
    """Metrics as rows, one column per (model, split), cells 'value [lo, hi]'."""
    cols = [f"{r.model}:{r.split}" for r in results]
    lines = []
    cells: list[list[str]] = []
    for name in metric_names(results):
        row = []
        for r in results:
            if name not in r.values:
                row.append("")
                continue
            v = r.values[name]
            ci = r.intervals.get(name)
            row.append(f"{v:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") if name != "MedR" else f"{v:.1f}")
        cells.append([name] + row)
    widths = [max(len(x) for x in col) for col in zip(["metric"] + cols, *cells)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(["metric"] + cols, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)
    return "\n".join(lines)


def to_json(results: list[SplitResult], rankers: dict[str, Ranker], ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {"data": {"path": str(ds.root), "name": ds.manifest.get("name"), "manifest_hash": ds.manifest_hash,
                                    "provenance": ds.manifest.get("provenance"), "synthetic": ds.is_synthetic},
                           "models": {}}
    for res in results:
        model = out["models"].setdefault(res.model, {"info": {k: rankers[res.model].info.get(k) for k in ("kind", "variant", "mode", "name")},
                                                     "splits": {}})
        model["splits"][res.split] = {n: {"value": v, **({"ci95": list(res.intervals[n])} if n in res.intervals else {})}
                                      for n, v in res.values.items()}
    return out


def open_model(spec: str, ds: Dataset | None, device: str) -> Ranker:
    if spec == "popularity":
        if ds is None:
            raise DatasetError("the popularity ranker needs --data (it counts training picks)")
        return popularity_ranker(ds.ugc.train.music, ds.n_tracks)
    return load_ranker(spec, device=device)


def evaluate(models: list[str], data: str | Path | None = None, splits: list[str] | None = None, n_boot: int = 1000,
             device: str = "auto") -> tuple[list[SplitResult], dict[str, Any]]:
    """Evaluate ``models`` on ``splits`` of ``data`` (default: the first model's training data)."""
    if data is None:
        first = next((m for m in models if m != "popularity"), None)
        if first is None:
            raise DatasetError("no dataset given. Fix: --data DIR")
        data = read_config(first).data_path
    ds = load_dataset(data)
    rankers: dict[str, Ranker] = {}
    for spec in models:
        rk = open_model(spec, ds, device)
        if rk.run is not None:
            check_data(rk.run, ds, spec)
            if rk.run.data["manifest_hash"] != ds.manifest_hash:
                log.warning("%s was trained on %s, evaluating on %s", spec, rk.run.data["name"], ds.manifest.get("name"))
        name, i = rk.name, 2
        while name in rankers:
            name, i = f"{rk.name}#{i}", i + 1
        rk.name = name
        rankers[name] = rk
    splits = splits or (["test", "test_oracle"] if ds.ugc.test_oracle is not None else ["test"])
    results = [evaluate_split(rk, ds, split) for split in splits for rk in rankers.values()]
    if n_boot:
        add_intervals(results, n_boot)
    return results, to_json(results, rankers, ds)


def build_parser(prog: str = "deccm evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="run dir (or its best.pt), or 'popularity'")
    p.add_argument("--compare", nargs="+", default=[], metavar="MODEL", help="more models side by side on the same rows")
    p.add_argument("--data", type=Path, default=None, help="dataset dir (default: the first model's training data)")
    p.add_argument("--split", action="append", default=None, help="test, test_oracle, val or gate; repeatable (default: test [+ test_oracle])")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: $DECCM_HOME/eval/<models>.json)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0 = none)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-track", action="store_true", help="do not log the figures to the models' MLflow runs")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None, prog: str = "deccm evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    models = ([args.model] if args.model else []) + args.compare
    if not models:
        print("error: give a model (run dir or 'popularity') and/or --compare MODEL ...", file=sys.stderr)
        return 2
    try:
        results, payload = evaluate(models, args.data, args.split, args.bootstrap, args.device)
    except (DatasetError, RunError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if payload["data"]["synthetic"]:
        print(f"[data {payload['data']['name']} is SYNTHETIC]")
    print(format_table(results))
    out = args.out or config.state_path("eval", "-".join(Path(m).name for m in models)[:120] + ".json")
    safeio.write_json(out, payload)
    print(f"\nwrote {out}")
    if not args.no_track:
        _log_to_mlflow(models, results)
    return 0


def _log_to_mlflow(models: list[str], results: list[SplitResult]) -> None:
    """Each evaluated run's figures go to its training's MLflow run (when it was tracked)."""
    from deccm import tracking

    names = {r.model for r in results}
    for spec in models:
        if spec == "popularity":
            continue
        try:
            conf = read_config(spec)
            run_id = tracking.find_run(spec, conf)
            name = conf.name if conf.name in names else None
            if run_id is None or name is None:
                continue
            tracking.log_evaluation(run_id, {r.split: r.values for r in results if r.model == name})
            print(f"logged {name}'s figures to MLflow run {run_id}")
        except Exception as e:  # noqa: BLE001 - tracking is a side channel: never fail the evaluation for it
            log.warning("could not log %s to MLflow: %s", spec, e)


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.evaluate"))
