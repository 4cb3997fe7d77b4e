"""What the demo's models learn on the default demo corpus, over several corpus seeds.

For each seed: builds (or reuses) ``$DECCM_HOME/data/demo-s<seed>`` exactly as the pipeline
does, trains the teacher and the plain, no-deconf and DecCM students with the pipeline's
demo loop settings (``deccm.pipeline.TRAINING["demo"]``), and scores them, popularity and
the planted affinity itself (the ceiling: the generator's own relation on the clips' true
looks) on ``val`` (logged picks: what a variant is chosen on) and ``test_oracle`` (picks
drawn from the planted affinity alone: what the suggestions are worth), with 95 %
bootstrap intervals. Results go to docs/results.md.

Usage: python benchmarks/demo_quality.py [--seeds 1 2 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from deccm import config, pipeline
from deccm.data import load_dataset
from deccm.data.corpus import relation
from deccm.evaluate import evaluate
from deccm.metrics import hit_rate, positive_rank
from deccm.runs import TrainConfig
from deccm.train import configs_from_dict, train

VARIANTS = ("plain", "no-deconf", "deccm")


def affinity_hit_rate(data: Path, split: str, k: int = 10) -> float:
    """HR@k of ranking each row's 101 candidates by the planted affinity of the clip's true look."""
    ds = load_dataset(data)
    v, q = relation.from_manifest(ds.manifest, ds.videos)
    rows = getattr(ds.ugc, split)
    scores = np.take_along_axis(relation.affinity(v, q)[rows.video], rows.candidates(), axis=1)
    return hit_rate(positive_rank(scores), k)


def one_seed(seed: int, device: str) -> dict:
    cfg = pipeline.make_config({"source": "demo", "seed": seed, "device": device})
    t0 = time.perf_counter()
    data = Path(pipeline.prepare_data(cfg))
    out = {"seed": seed, "data": str(data), "build_s": time.perf_counter() - t0, "models": {}}
    tc = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["train_seed"], device=device)
    runs_root = config.runs_dir() / "demo-quality" / f"s{seed}"
    teacher = train("teacher", data, runs_root / "teacher", configs_from_dict({"variant": "deccm"})[0], tc,
                    resume="auto", overwrite=True)
    runs = {}
    for variant in VARIANTS:
        runs[variant] = train("student", data, runs_root / variant, configs_from_dict({"variant": variant})[0], tc,
                              teacher=None if variant == "plain" else teacher, variant=variant, resume="auto", overwrite=True)
    results, _ = evaluate([str(runs[v]) for v in VARIANTS] + ["popularity"], data, splits=["val", "test_oracle"],
                          n_boot=1000, device=device)
    names = {**{str(runs[v].name): v for v in VARIANTS}, "popularity": "popularity"}
    for r in results:
        name = names.get(r.model, r.model)
        entry = out["models"].setdefault(name, {})
        entry[r.split] = {m: [float(r.values[m]), *map(float, r.intervals.get(m, (np.nan, np.nan)))]
                          for m in ("HR@10", "HR_w@10", "genre_KL@10") if m in r.values}
    out["models"]["planted affinity"] = {s: {"HR@10": [affinity_hit_rate(data, s)]} for s in ("val", "test_oracle")}
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
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cores; DECCM_HOME={config.home()}")
    print(f"loop settings: {pipeline.TRAINING['demo']}")
    seeds = [one_seed(s, args.device) for s in args.seeds]
    print("| seed | model | val HR@10 | val HR_w@10 | oracle HR@10 | oracle HR_w@10 | oracle genre_KL@10 |")
    print("|---|---|---|---|---|---|---|")
    for s in seeds:
        for name, m in s["models"].items():
            val, orc = m.get("val", {}), m.get("test_oracle", {})
            print(f"| {s['seed']} | {name} | {fmt(val.get('HR@10'))} | {fmt(val.get('HR_w@10'))} | {fmt(orc.get('HR@10'))} "
                  f"| {fmt(orc.get('HR_w@10'))} | {fmt(orc.get('genre_KL@10'))} |")
    for name in [*VARIANTS, "popularity", "planted affinity"]:
        val = [s["models"][name]["val"]["HR@10"][0] for s in seeds]
        orc = [s["models"][name]["test_oracle"]["HR@10"][0] for s in seeds]
        print(f"mean over seeds {args.seeds}: {name:17s} val HR@10 {np.mean(val):.3f}  oracle HR@10 {np.mean(orc):.3f} "
              f"(min {np.min(orc):.3f})")
    if args.json:
        args.json.write_text(json.dumps(seeds, indent=1))


if __name__ == "__main__":
    main()
