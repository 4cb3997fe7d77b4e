"""The debiasing result: faithful DecCM, fixed DecCM and every baseline, side by side, per confounding strength.

For each strength of the taste → video path (``deccm.data.synth.CONFOUNDING``: none,
moderate, strong) and each seed: generate the synthetic preset (data seed = seed), train a
teacher per mode and every student variant (training seed = seed), evaluate all of them on
the biased ``test`` and the unbiased ``test_oracle`` split, then pool the seeds: each cell
is the mean over seeds with a 95% bootstrap interval over the pooled test rows, and the
seed standard deviation. "taste R²" is a linear probe's held-out R² of the uploader's
genre taste from each model's video vectors (``deccm.evaluate.taste_probe``). The same world with unconfounded logs (γ = 0) trains plain
matching once more: the ceiling. "recovered" is the share of the confounding cost a model
wins back on the oracle split: (model − plain) / (plain on unconfounded logs − plain).

Writes one table per strength into ``docs/results.md`` (or --out), between that
strength's BEGIN/END markers, and a JSON beside it.

The mediated axis (``--mediated``: the taste also pulls the video's *content*, which then
really fits the taste's genres, ``deccm.data.synth.MEDIATED``) makes a grid of cells
nuisance × mediated; its summary (oracle HR_w@10 per model and cell, and each model's worst
gap to the best of a cell: how the default is chosen) goes between the "grid" markers.

Usage: python benchmarks/debias.py [--preset small] [--seeds 0 1 2] [--strengths none moderate strong]
       [--mediated none] [--cells NUISANCE:MEDIATED ...]
       [--epochs 50] [--device auto] [--work DIR] [--models LABEL ...] [--jobs 1] [--no-ceiling]
Runs are reused (or resumed) from --work, so an interrupted benchmark continues. --jobs N runs
N (strength, seed) worlds at once in separate processes: on a GPU the small models leave it
mostly idle, so several worlds share it at little cost each.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import logging
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deccm import config, safeio, metrics
from deccm.data import Dataset, load_dataset
from deccm.data.synth import CONFOUNDING, MEDIATED, synth
from deccm.evaluate import SplitResult, evaluate_split, taste_probe
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
    ("ridge regression", "student", "fixed", "ridge", None),
    ("ridge regression, taste erased", "student", "fixed", "ridge-erased", None),
    ("ridge regression, taste erased beyond content", "student", "fixed", "ridge-erased-residual", None),
    ("student, taste adversary", "student", "fixed", "adversarial", "fixed"),
    ("student, taste erased", "student", "fixed", "erased", "fixed"),
    ("student, taste erased beyond content", "student", "fixed", "erased-residual", "fixed"),
    ("blend: student (taste erased beyond content) + ridge (taste erased)", "student", "fixed", "blend", "fixed"),
    ("popularity", "popularity", "-", "-", None),
]
TWIN = "plain matching, unconfounded logs (ceiling)"
PRIMARY = ("test_oracle", "HR_w@10")
COLUMNS = [("test_oracle", "HR_w@10"), ("test_oracle", "NDCG_w@10"), ("test_oracle", "HR@10"), ("test_oracle", "NDCG@10"),
           ("test", "HR_w@10"), ("test", "HR@10"), ("test", "NDCG@10"),
           ("test_oracle", "genre_KL@10"), ("test_oracle", "C_KL@10"), ("test_oracle", "top_genre_share@10"),
           ("test_oracle", "spearman_truth"), ("test_oracle", "taste_R2")]


def _run(kind: str, data: Path, out: Path, mode: str, variant: str, tcfg: TrainConfig, teacher: Path | None) -> Path:
    """Train unless a finished run of the same settings is there; resume a partial one."""
    return train(kind, data, out, ModelConfig.for_mode(mode, **VARIANTS.get(variant, {})), tcfg, teacher=teacher,
                 variant=variant, resume="auto", overwrite=True)


def _tag(strength: str, mediated: str) -> str:
    """Directory tag of a cell; strength and mediated none are the original benchmark: same data, same dirs."""
    return ("" if strength == "none" else f"-{strength}") + ("" if mediated == "none" else f"-med{mediated}")


def _data(work: Path, preset: str, seed: int, strength: str, gamma: float | None = None, mediated: str = "none") -> Path:
    """The world of (preset, seed, strength, mediated), generated once; ``gamma=0`` is its unconfounded twin."""
    data = work / f"data-{preset}{_tag(strength, mediated)}{'' if gamma is None else f'-g{gamma:g}'}-s{seed}"
    if not (data / "dataset.json").exists():
        over = {} if gamma is None else {"gamma": gamma}
        synth(data, preset=preset, seed=seed, overwrite=True, taste_video=CONFOUNDING[strength],
              taste_content=MEDIATED[mediated], **over)
    return data


def _scored(ranker: Ranker, ds: Dataset) -> list[SplitResult]:
    """[test, test_oracle] results; the oracle one also holds the taste probe of the video vectors."""
    results = [evaluate_split(ranker, ds, split) for split in ("test", "test_oracle")]
    results[1].values["taste_R2"] = taste_probe(ranker, ds)
    return results


def run_seed(preset: str, seed: int, work: Path, epochs: int, device: str, strength: str = "none",
             labels: list[str] | None = None, ceiling: bool = True, mediated: str = "none") -> dict[str, list[SplitResult]]:
    data = _data(work, preset, seed, strength, mediated=mediated)
    ds = load_dataset(data)
    tcfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    runs = work / f"runs-{preset}{_tag(strength, mediated)}-s{seed}"
    models = [m for m in MODELS if labels is None or m[0] in labels]
    needed = {m[4] for m in models if m[4]} | {m[2] for m in models if m[1] == "eval-teacher"}
    teachers = {m: _run("teacher", data, runs / f"teacher-{m}", m, "teacher", tcfg, None) for m in ("fixed", "faithful") if m in needed}
    out: dict[str, list[SplitResult]] = {}
    if ceiling:
        twin = _data(work, preset, seed, strength, gamma=0.0, mediated=mediated)
        run = _run("student", twin, runs / "student-plain-unconfounded", "fixed", "plain", tcfg, None)
        ranker = load_ranker(run, device=device)
        ranker.name = TWIN
        out[TWIN] = _scored(ranker, load_dataset(twin))
    for label, kind, mode, variant, tmode in models:
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
        out[label] = _scored(ranker, ds)
        log.info("%s/%s seed %d %-26s done in %.0f s: oracle HR_w@10 %.4f", strength, mediated, seed, label,
                 time.perf_counter() - t0, out[label][1].values["HR_w@10"])
    return out


def _worker_init(threads: int) -> None:
    """A spawned worker: its own log format and a share of the CPU threads."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(threads)


def grid_cells(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(nuisance strength, mediated strength) cells: --cells as given, else every --strengths × --mediated pair."""
    if args.cells:
        return [tuple(c.split(":")) for c in args.cells]  # type: ignore[misc]
    return [(s, m) for s in args.strengths for m in args.mediated]


def run_all(args: argparse.Namespace, work: Path) -> dict[tuple[str, str, int], dict[str, list[SplitResult]]]:
    """Every (strength, mediated, seed) world of the run; --jobs > 1 trains several worlds in parallel processes."""
    cells = [(strength, mediated, seed) for seed in args.seeds for strength, mediated in grid_cells(args)]  # seed 0 first
    todo = [(args.preset, seed, work, args.epochs, args.device, strength, args.models, args.ceiling, mediated)
            for strength, mediated, seed in cells]
    if args.jobs <= 1:
        return {cell: run_seed(*a) for cell, a in zip(cells, todo)}
    threads = max(1, (multiprocessing.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),  # spawn: CUDA cannot fork
                             initializer=_worker_init, initargs=(threads,)) as ex:
        futures = {cell: ex.submit(run_seed, *a) for cell, a in zip(cells, todo)}
        return {cell: f.result() for cell, f in futures.items()}


def pool(per_seed: list[dict[str, list[SplitResult]]], n_boot: int,
         confounded: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean over seeds; 95% bootstrap CI over the rows of all seeds (each seed's weights scaled to 1/S)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    n_seeds = len(per_seed)
    for label in per_seed[0]:
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
    plain, ceiling = table.get("plain matching"), table.get(TWIN)
    if plain and ceiling and confounded:  # without the backdoor there is no cost to recover: the share is noise over noise
        key = f"{PRIMARY[0]}:{PRIMARY[1]}"
        cost = ceiling[key]["mean"] - plain[key]["mean"]
        for cells in table.values():
            cells["recovered"] = {"mean": (cells[key]["mean"] - plain[key]["mean"]) / cost if abs(cost) > 1e-9 else float("nan")}
    return table


def to_markdown(table: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> str:
    recovered = any("recovered" in cells for cells in table.values())  # only where the backdoor has a cost
    head = ["model"] + [("taste R² of video vectors" if m == "taste_R2" else f"{'oracle' if s == 'test_oracle' else 'biased'} {m}")
                        for s, m in COLUMNS] + ["recovered"] * recovered
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
        if recovered:
            rec = cells.get("recovered", {}).get("mean")
            row.append("–" if rec is None or not np.isfinite(rec) else f"{100 * rec:.0f} %")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def cell_key(strength: str, mediated: str = "none") -> str:
    """The name of a cell in markers and the JSON: the strength alone for the original benchmark."""
    return strength if mediated == "none" else f"{strength} x mediated {mediated}"


def markers(key: str) -> tuple[str, str]:
    """The BEGIN/END comments around one cell's table (none keeps the original benchmark's markers)."""
    tag = "" if key == "none" else f": {key}"
    return f"<!-- BEGIN debias table{tag} -->", f"<!-- END debias table{tag} -->"


def grid_markdown(cells: dict[str, dict[str, Any]]) -> str:
    """Oracle HR_w@10 of every model in every (nuisance, mediated) cell run so far: mean [95 %] (seeds)."""
    order = [(s, m) for s in CONFOUNDING for m in MEDIATED if cell_key(s, m) in cells]
    labels = [m[0] for m in MODELS if any(m[0] in cells[cell_key(*c)]["table"] for c in order)]
    labels = [TWIN] + labels if any(TWIN in cells[cell_key(*c)]["table"] for c in order) else labels
    head = ["model"] + [f"{s} / {m} ({cells[cell_key(s, m)]['meta']['seeds']} seed{'s' * (cells[cell_key(s, m)]['meta']['seeds'] > 1)})"
                        for s, m in order] + ["worst gap to the cell's best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    key = f"{PRIMARY[0]}:{PRIMARY[1]}"
    value = {(label, c): cells[cell_key(*c)]["table"].get(label, {}).get(key) for label in labels for c in order}
    # the best deployable model of each cell: the ceiling twin is trained on logs no deployment has
    best = {c: max((v["mean"] for (label, cc), v in value.items() if cc == c and v and label != TWIN), default=float("nan"))
            for c in order}
    for label in labels:
        row = [label]
        for c in order:
            v = value[(label, c)]
            row.append("–" if v is None else f"{v['mean']:.3f}" + (f" [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" if "ci95" in v else ""))
        gaps = [best[c] - value[(label, c)]["mean"] for c in order if value[(label, c)]]
        row.append("–" if label == TWIN or len(gaps) < len(order) else f"{max(gaps):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_section(out: Path, key: str, text: str) -> None:
    """Replace the cell's section of ``out`` (appended when its markers are missing); the rest is kept."""
    begin, end = markers(key)
    section = f"{begin}\n{text}\n{end}"
    old = out.read_text() if out.exists() else "# Results\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + section + "\n"
    safeio.write_text(out, new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strengths", nargs="+", choices=list(CONFOUNDING), default=list(CONFOUNDING),
                   help="taste -> video strengths to run (deccm.data.synth.CONFOUNDING)")
    p.add_argument("--mediated", nargs="+", choices=list(MEDIATED), default=["none"],
                   help="taste -> content strengths (deccm.data.synth.MEDIATED); every --strengths x --mediated cell is run")
    p.add_argument("--cells", nargs="+", default=None, metavar="NUISANCE:MEDIATED",
                   help="exactly these cells instead of the product, e.g. strong:none none:strong")
    p.add_argument("--models", nargs="+", choices=[m[0] for m in MODELS], default=None, metavar="LABEL",
                   help="only these rows (default: all); plain matching is needed for the recovered share")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                   help="train plain matching on each world's unconfounded twin: the ceiling of the recovered share")
    p.add_argument("--jobs", type=int, default=1, help="(cell, seed) worlds trained at once in separate processes")
    p.add_argument("--work", type=Path, default=None, help="datasets and runs (default: $DECCM_HOME/bench/debias)")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"),
                   help="markdown file whose table section (between the BEGIN/END markers) is replaced; text around it is kept")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    work = args.work or config.state_path("bench", "debias")
    device = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    everything = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    everything = everything if "strengths" in everything else {"strengths": {}}
    t0 = time.perf_counter()
    worlds = run_all(args, work)
    minutes = (time.perf_counter() - t0) / 60  # the whole run: with --jobs the strengths overlap
    for strength, mediated in grid_cells(args):
        per_seed = [worlds[(strength, mediated, s)] for s in args.seeds]
        key = cell_key(strength, mediated)
        meta = {"preset": args.preset, "strength": strength, "taste_video": CONFOUNDING[strength], "mediated": mediated,
                "taste_content": MEDIATED[mediated], "seeds": len(args.seeds), "seed_list": args.seeds, "epochs": args.epochs,
                "device": device, "torch": torch.__version__, "jobs": args.jobs, "run_cells": grid_cells(args), "minutes": minutes}
        table = pool(per_seed, args.bootstrap, confounded=CONFOUNDING[strength] > 0 or MEDIATED[mediated] > 0)
        md = to_markdown(table, meta)
        write_section(args.out, key, f"_Generated by `python benchmarks/debias.py {shlex.join(sys.argv[1:])}` — preset "
                      f"{meta['preset']}, confounding {strength} (taste → video s = {meta['taste_video']:g}), mediated "
                      f"{mediated} (taste → content t = {meta['taste_content']:g}), seeds {meta['seed_list']}, "
                      f"{meta['epochs']} epochs, {meta['device']}, torch {meta['torch']}, {meta['minutes']:.0f} min for the "
                      f"run of {len(meta['run_cells'])} cell(s) with {args.jobs} job(s). Cells: mean over seeds [95% bootstrap "
                      f"interval over the pooled test rows] ±seed sd; recovered: share of plain matching's confounding cost "
                      f"won back on oracle HR_w@10._\n\n{md}")
        everything["strengths"][key] = {"meta": meta, "table": table}
        safeio.write_json(args.out.with_suffix(".json"), everything)
        print(json.dumps(meta))
        print(md)
    if any(m != "none" for _, m in grid_cells(args)):
        write_section(args.out, "grid", "Oracle HR_w@10, mean over seeds [95% bootstrap interval over the pooled test rows]; "
                      "columns are nuisance / mediated strength.\n\n" + grid_markdown(everything["strengths"]))

if __name__ == "__main__":
    main()
