"""What the demo's models learn on a demo corpus (rendered scores or recorded music), over several corpus seeds.

For each seed: builds (or reuses) ``$DECCM_HOME/data/demo-s<seed>`` exactly as the pipeline
does, trains the teacher and the plain, no-deconf and DecCM students with the pipeline's
demo loop settings (``deccm.pipeline.TRAINING["demo"]``), and scores them, popularity and
the planted affinity itself (the ceiling: the generator's own relation on the clips' true
looks) on ``val`` (logged picks: what a variant is chosen on) and ``test_oracle`` (picks
drawn from the planted affinity alone: what the suggestions are worth), with 95 %
bootstrap intervals. Results go to docs/results.md.

Beside HR@10 on drawn picks it reports ``planted R@10``: the expected full-catalog recall@10
of a pick drawn from the planted affinity alone, on the val clips (a choice may use it) and
the test clips. Its chance level is 10 / the catalog size. ``oracle E[HR@10]`` is what
test_oracle's HR@10 measures, without the draws' noise: its expectation over the
affinity-only pick and the 100 uniform negatives, averaged over the test clips.

Usage: python benchmarks/demo_quality.py [--seeds 1 2 3] [--device cpu] [--source recorded] [--variants plain ridge]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import hypergeom

from deccm import config, pipeline
from deccm.data import Dataset, load_dataset
from deccm.data.corpus import relation
from deccm.evaluate import evaluate
from deccm.metrics import hit_rate, positive_rank
from deccm.runs import TrainConfig
from deccm.serve import load_ranker, popularity_ranker
from deccm.train import configs_from_dict, train

VARIANTS = ("plain", "no-deconf", "deccm")


def affinity_hit_rate(ds: Dataset, split: str, k: int = 10) -> float:
    """HR@k of ranking each row's 101 candidates by the planted affinity of the clip's true look."""
    v, q = relation.from_manifest(ds.manifest, ds.videos)
    rows = getattr(ds.ugc, split)
    scores = np.take_along_axis(relation.affinity(v, q, relation.map_of(ds.manifest))[rows.video], rows.candidates(), axis=1)
    return hit_rate(positive_rank(scores), k)


def _picks_and_scores(scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, ds: Dataset,
                      split: str) -> tuple[np.ndarray, np.ndarray]:
    """(p, s), each (clips, M), over the split's distinct clips: p = softmax(β·a), the planted affinity-only
    pick (how test_oracle's picks are drawn); s = the model's scores, or the affinity itself for None."""
    v, q = relation.from_manifest(ds.manifest, ds.videos)
    clips = np.unique(getattr(ds.ugc, split).video)
    a = relation.affinity(v[clips], q, relation.map_of(ds.manifest))
    p = np.exp(ds.manifest["generator"]["beta"] * (a - a.max(axis=1, keepdims=True)))
    p /= p.sum(axis=1, keepdims=True)
    s = a if scores is None else scores(np.asarray(ds.ugc.video_features)[clips], np.asarray(ds.ugc.music_features))
    return p, s


def planted_recall(scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, ds: Dataset, split: str, k: int = 10) -> float:
    """Expected recall@k over the whole catalog of a pick drawn from the planted affinity alone, softmax(β·a) (how
    test_oracle's picks are drawn), averaged over the split's clips; ``scores`` None ranks by the affinity itself.

    Unlike HR@10 on one drawn pick per clip it has no pick noise, and on ``val`` clips it is a
    figure a choice may look at that logged picks do not bias (docs/results.md, the demo corpus)."""
    p, s = _picks_and_scores(scores, ds, split)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(p, top, axis=1).sum(axis=1).mean())


def expected_hit_rate(scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, ds: Dataset, k: int = 10) -> float:
    """E[HR@k] on test_oracle without its draws' noise: over the test clips, Σ_m p(m | clip) · P(fewer than k of
    the row's n uniform negatives outscore m), with p = softmax(β·a) the affinity-only pick and the
    count of negatives above m hypergeometric (n drawn from the M − 1 other tracks, of which c_m
    outscore m; ties count against m, as in deccm.metrics.positive_rank)."""
    p, s = _picks_and_scores(scores, ds, "test_oracle")
    above = (s[:, None, :] >= s[:, :, None]).sum(axis=2) - 1  # (clips, M): other tracks scoring at least m's
    n_neg = ds.ugc.test_oracle.negatives.shape[1]
    return float((p * hypergeom.cdf(k - 1, s.shape[1] - 1, above, n_neg)).sum(axis=1).mean())


def one_seed(seed: int, device: str, balance_blocks: str | None = None, source: str = "demo",
             variants: tuple[str, ...] = VARIANTS) -> dict:
    cfg = pipeline.make_config({"source": source, "seed": seed, "device": device, "balance_blocks": balance_blocks})
    t0 = time.perf_counter()
    data = Path(pipeline.prepare_data(cfg))
    out = {"seed": seed, "balance_blocks": cfg["balance_blocks"], "data": str(data), "build_s": time.perf_counter() - t0, "models": {}}
    tc = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["train_seed"], device=device)
    runs_root = config.runs_dir() / "demo-quality" / f"{'' if source == 'demo' else source + '-'}s{seed}{'-balanced' if cfg['balance_blocks'] else ''}"
    model = {"balance_blocks": cfg["balance_blocks"]}  # the pipeline's model setting for the demo, in every model
    teacher = None if set(variants) <= {"plain", "ridge"} else train("teacher", data, runs_root / "teacher", configs_from_dict({"variant": "deccm", "model": model})[0], tc,
                    resume="auto", overwrite=True)
    runs = {}
    for variant in variants:
        runs[variant] = train("student", data, runs_root / variant, configs_from_dict({"variant": variant, "model": model})[0], tc,
                              teacher=None if variant in ("plain", "ridge") else teacher, variant=variant, resume="auto",
                              overwrite=True)
    results, _ = evaluate([str(runs[v]) for v in variants] + ["popularity"], data, splits=["val", "test_oracle"],
                          n_boot=1000, device=device)
    names = {**{str(runs[v].name): v for v in variants}, "popularity": "popularity"}
    for r in results:
        name = names.get(r.model, r.model)
        entry = out["models"].setdefault(name, {})
        entry[r.split] = {m: [float(r.values[m]), *map(float, r.intervals.get(m, (np.nan, np.nan)))]
                          for m in ("HR@10", "HR_w@10", "genre_KL@10") if m in r.values}
    ds = load_dataset(data)
    out["models"]["planted affinity"] = {s: {"HR@10": [affinity_hit_rate(ds, s)]} for s in ("val", "test_oracle")}
    rankers = {**{v: load_ranker(runs[v], device).scores for v in variants},
               "popularity": popularity_ranker(np.asarray(ds.ugc.train.music), ds.n_tracks).scores, "planted affinity": None}
    for name, fn in rankers.items():
        for split, rows in (("val", "val"), ("test_oracle", "test")):  # test_oracle holds the test clips
            out["models"][name][split]["planted_R@10"] = [planted_recall(fn, ds, rows)]
        out["models"][name]["test_oracle"]["E_HR@10"] = [expected_hit_rate(fn, ds)]
    return out


def fmt(cell: list[float] | None) -> str:
    if not cell:
        return "—"
    if len(cell) == 3 and np.isfinite(cell[1]):
        return f"{cell[0]:.3f} [{cell[1]:.3f}, {cell[2]:.3f}]"
    return f"{cell[0]:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="cpu")
    p.add_argument("--balance-blocks", choices=["true", "false"], default=None,
                   help="override the demo's balance_blocks setting (default: the pipeline's, deccm.pipeline.TRAINING)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    p.add_argument("--source", choices=["demo", "recorded"], default="demo",
                   help="demo: the rendered-score corpus (make demo's default); recorded: Debian's soundtrack packages")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"students to train (default: {' '.join(VARIANTS)})")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cores; DECCM_HOME={config.home()}")
    print(f"source: {args.source}; loop settings: {pipeline.TRAINING[args.source]}" + (f", balance_blocks={args.balance_blocks}" if args.balance_blocks else ""))
    seeds = [one_seed(s, args.device, args.balance_blocks, args.source, tuple(args.variants)) for s in args.seeds]
    print("| seed | model | val HR@10 | val planted R@10 | oracle HR@10 | oracle E[HR@10] | oracle HR_w@10 | oracle planted R@10 "
          "| oracle genre_KL@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in seeds:
        for name, m in s["models"].items():
            val, orc = m.get("val", {}), m.get("test_oracle", {})
            print(f"| {s['seed']} | {name} | {fmt(val.get('HR@10'))} | {fmt(val.get('planted_R@10'))} | {fmt(orc.get('HR@10'))} "
                  f"| {fmt(orc.get('E_HR@10'))} | {fmt(orc.get('HR_w@10'))} | {fmt(orc.get('planted_R@10'))} | {fmt(orc.get('genre_KL@10'))} |")
    for name in [*args.variants, "popularity", "planted affinity"]:
        mean = {(split, m): np.mean([s["models"][name][split][m][0] for s in seeds])
                for split in ("val", "test_oracle") for m in ("HR@10", "planted_R@10")}
        mean["test_oracle", "E_HR@10"] = np.mean([s["models"][name]["test_oracle"]["E_HR@10"][0] for s in seeds])
        low = np.min([s["models"][name]["test_oracle"]["HR@10"][0] for s in seeds])
        print(f"mean over seeds {args.seeds}: {name:17s} val HR@10 {mean['val', 'HR@10']:.3f}  val planted R@10 "
              f"{mean['val', 'planted_R@10']:.3f}  oracle HR@10 {mean['test_oracle', 'HR@10']:.3f} (min {low:.3f})  "
              f"oracle E[HR@10] {mean['test_oracle', 'E_HR@10']:.3f}  "
              f"oracle planted R@10 {mean['test_oracle', 'planted_R@10']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(seeds, indent=1))


if __name__ == "__main__":
    main()
