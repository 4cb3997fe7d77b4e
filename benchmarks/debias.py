"""The debiasing result: faithful DecCM, fixed DecCM and every baseline, side by side.

For each seed: generate the synthetic preset (data seed = seed), train a teacher per mode
and every student variant (training seed = seed), evaluate all of them on the biased
``test`` and the unbiased ``test_oracle`` split, then pool the seeds: each cell is the
mean over seeds with a 95% bootstrap interval over the pooled test rows, and the seed
standard deviation. Writes ``docs/results.md`` (or --out) and a JSON beside it.

Usage: python benchmarks/debias.py [--preset small] [--seeds 0 1 2] [--epochs 50] [--device auto] [--work DIR]
Runs are reused (or resumed) from --work, so an interrupted benchmark continues.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deccm import config, io, metrics
from deccm.data import load_dataset
from deccm.data.synth import synth
from deccm.evaluate import SplitResult, evaluate_split
from deccm.models import ModelConfig
from deccm.serve import Ranker, load_ranker, popularity_ranker
from deccm.train import VARIANTS, TrainConfig, train

log = logging.getLogger("debias")

# (label, kind, mode, variant, teacher mode); kind "eval-teacher" scores the teacher itself
MODELS: list[tuple[str, str, str, str, str | None]] = [
    ("DecCM fixed", "student", "fixed", "deccm", "fixed"),
    ("DecCM fixed, content score only", "content-only", "fixed", "deccm", "fixed"),
    ("DecCM faithful", "student", "faithful", "deccm", "faithful"),
    ("plain matching", "student", "fixed", "plain", None),
    ("teacher only (PGC)", "eval-teacher", "fixed", "teacher", None),
    ("student w/o distillation", "student", "fixed", "no-distill", None),
    ("student w/o deconfounding", "student", "fixed", "no-deconf", "fixed"),
    ("IPS matching", "student", "fixed", "ips", None),
    ("popularity", "popularity", "-", "-", None),
]
COLUMNS = [("test_oracle", "HR_w@10"), ("test_oracle", "NDCG_w@10"), ("test_oracle", "HR@10"), ("test_oracle", "NDCG@10"),
           ("test", "HR_w@10"), ("test", "HR@10"), ("test", "NDCG@10"),
           ("test_oracle", "genre_KL@10"), ("test_oracle", "C_KL@10"), ("test_oracle", "top_genre_share@10"),
           ("test_oracle", "spearman_truth")]


def _run(kind: str, data: Path, out: Path, mode: str, variant: str, tcfg: TrainConfig, teacher: Path | None) -> Path:
    """Train unless a finished run of the same settings is there; resume a partial one."""
    return train(kind, data, out, ModelConfig.for_mode(mode, **VARIANTS.get(variant, {})), tcfg, teacher=teacher,
                 variant=variant, resume="auto", overwrite=True)


def run_seed(preset: str, seed: int, work: Path, epochs: int, device: str) -> dict[str, list[SplitResult]]:
    data = work / f"data-{preset}-s{seed}"
    if not (data / "dataset.json").exists():
        synth(data, preset=preset, seed=seed, overwrite=True)
    ds = load_dataset(data)
    tcfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    runs = work / f"runs-{preset}-s{seed}"
    teachers = {m: _run("teacher", data, runs / f"teacher-{m}", m, "teacher", tcfg, None) for m in ("fixed", "faithful")}
    out: dict[str, list[SplitResult]] = {}
    for label, kind, mode, variant, tmode in MODELS:
        t0 = time.perf_counter()
        if kind == "popularity":
            ranker = popularity_ranker(ds.ugc.train.music, ds.n_tracks, seed=seed)
        elif kind == "eval-teacher":
            ranker = load_ranker(teachers[mode], device=device)
        elif kind == "content-only":  # diagnostic: the same DecCM without its inference taste column
            full = load_ranker(runs / f"student-{variant}-{mode}", device=device)
            ranker = Ranker(label, lambda x, f=full.video_fn: f(x)[:, :-1], lambda x, f=full.music_fn: f(x)[:, :-1], full.device)
        else:
            run = _run("student", data, runs / f"student-{variant}-{mode}", mode, variant, tcfg, teachers[tmode] if tmode else None)
            ranker = load_ranker(run, device=device)
        ranker.name = label
        out[label] = [evaluate_split(ranker, ds, split) for split in ("test", "test_oracle")]
        log.info("seed %d %-26s done in %.0f s: oracle HR_w@10 %.4f", seed, label, time.perf_counter() - t0,
                 out[label][1].values["HR_w@10"])
    return out


def pool(per_seed: list[dict[str, list[SplitResult]]], n_boot: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean over seeds; 95% bootstrap CI over the rows of all seeds (each seed's weights scaled to 1/S)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    n_seeds = len(per_seed)
    for label, *_ in MODELS:
        table[label] = {}
        for si, split in enumerate(("test", "test_oracle")):
            results = [s[label][si] for s in per_seed]
            for name in results[0].values:
                vals = [r.values[name] for r in results]
                cell: dict[str, Any] = {"mean": float(np.mean(vals)), "seed_sd": float(np.std(vals, ddof=1)) if n_seeds > 1 else 0.0,
                                        "per_seed": vals}
                if name in results[0].per_row:
                    v = np.concatenate([r.per_row[name][0] for r in results])
                    ws = [r.per_row[name][1] for r in results]
                    w = None if ws[0] is None else np.concatenate([wi / wi.sum() / n_seeds for wi in ws])
                    cell["ci95"] = list(metrics.bootstrap_ci(v, w, n_boot=n_boot, seed=0))
                table[label][f"{split}:{name}"] = cell
    return table


def to_markdown(table: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> str:
    head = ["model"] + [f"{'oracle' if s == 'test_oracle' else 'biased'} {m}" for s, m in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in table.items():
        row = [label]
        for split, name in COLUMNS:
            c = cells.get(f"{split}:{name}")
            if c is None:
                row.append("–")
                continue
            txt = f"{c['mean']:.3f}"
            if "ci95" in c:
                txt += f" [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]"
            if meta["seeds"] > 1:
                txt += f" ±{c['seed_sd']:.3f}"
            row.append(txt)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- BEGIN debias table -->", "<!-- END debias table -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--work", type=Path, default=None, help="datasets and runs (default: $DECCM_HOME/bench/debias)")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"),
                   help="markdown file whose table section (between the BEGIN/END markers) is replaced; text around it is kept")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    work = args.work or config.state_path("bench", "debias")
    t0 = time.perf_counter()
    per_seed = [run_seed(args.preset, s, work, args.epochs, args.device) for s in args.seeds]
    device = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    meta = {"preset": args.preset, "seeds": len(args.seeds), "seed_list": args.seeds, "epochs": args.epochs, "device": device,
            "torch": torch.__version__, "minutes": (time.perf_counter() - t0) / 60}
    table = pool(per_seed, args.bootstrap)
    md = to_markdown(table, meta)
    section = (f"{BEGIN}\n_Generated by `python benchmarks/debias.py {' '.join(sys.argv[1:])}` — preset {meta['preset']}, "
               f"seeds {meta['seed_list']}, {meta['epochs']} epochs, {meta['device']}, torch {meta['torch']}, "
               f"{meta['minutes']:.0f} min. Cells: mean over seeds [95% bootstrap interval over the pooled test rows] ±seed sd._\n\n{md}\n{END}")
    old = args.out.read_text() if args.out.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + section + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + section + "\n"
    io.write_text(args.out, new)
    io.write_json(args.out.with_suffix(".json"), {"meta": meta, "table": table})
    print(json.dumps(meta))
    print(md)


if __name__ == "__main__":
    main()
