"""The gate study: does the promotion gate pick the model that is better on the oracle split?

On the debias benchmark (``benchmarks/debias.py``: the synthetic preset with the taste →
video backdoor at moderate and strong strength), for each seed the three students
"student, taste erased", "plain matching" and "student w/o deconfounding" are trained (or
reused from --work, resumable), and the gate (``deccm.gate``) judges the pairs
(erased, plain) and (erased, w/o deconfounding) in both orders as champion → challenger,
on the ``gate`` split (logged, confounded choices; its clips saw no early stopping).

Per pair it reports the oracle difference challenger − champion of the gate metric on
``test_oracle`` (positives drawn from the true affinity alone), the gate's decision with
its deciding (SNIPS) interval, what the same gate would decide on the plain estimate, and
what the old rule (point estimates on ``val``, margin alone) would have done. The oracle's
choice is "promote" when the challenger is better on the oracle by more than the margin;
agreement is the gate's choice equal to it. The goal (issue 20): ≥ 10 of 12 agree, and no
promotion of a challenger worse on the oracle by more than the margin.

Usage: python benchmarks/gate_study.py [--preset small] [--seeds 0 1 2] [--strengths moderate strong]
       [--epochs 50] [--metric HR_w@10] [--device auto] [--work DIR] [--out docs/results.md]
Writes the table into --out between the BEGIN/END markers of the preset, epochs and gate metric, and a JSON beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debias  # noqa: E402 - the benchmark's worlds and runs, shared rather than copied

from deccm import config, gate, safeio  # noqa: E402
from deccm.data import load_dataset  # noqa: E402
from deccm.data.synth import CONFOUNDING, synth  # noqa: E402
from deccm.evaluate import evaluate_split  # noqa: E402
from deccm.serve import Ranker, load_ranker  # noqa: E402
from deccm.train import TrainConfig  # noqa: E402

log = logging.getLogger("gate_study")

ERASED, PLAIN, NODECONF = "student, taste erased", "plain matching", "student w/o deconfounding"
PAIRS = [(ERASED, PLAIN), (PLAIN, ERASED), (ERASED, NODECONF), (NODECONF, ERASED)]  # (champion, challenger)


def markers(preset: str, epochs: int, metric: str) -> tuple[str, str]:
    """The BEGIN/END comments around the table of one world size, training length and gate metric."""
    what = f"gate study: {preset}, {epochs} epochs, {metric}"
    return f"<!-- BEGIN {what} -->", f"<!-- END {what} -->"


def _gate_data(work: Path, preset: str, seed: int, strength: str) -> Path:
    """The world with its ``gate`` split. A world made before the split existed gets a twin with it: the gate's
    clips come from their own stream, so train/val/test are byte-identical and the runs trained on it apply."""
    data = debias._data(work, preset, seed, strength)
    if load_dataset(data).ugc.gate is not None:
        return data
    twin = data.with_name(data.name + "-gate")
    if not (twin / "dataset.json").exists():
        synth(twin, preset=preset, seed=seed, overwrite=True, taste_video=CONFOUNDING[strength])
    return twin


def _models(preset: str, seed: int, strength: str, work: Path, epochs: int, device: str) -> dict[str, Path]:
    """Train (or reuse, or resume) the three students of one world and the teacher two of them distil from."""
    data = debias._data(work, preset, seed, strength)
    tcfg = TrainConfig(epochs=epochs, seed=seed, device=device)
    runs = work / f"runs-{preset}-{strength}-s{seed}"
    teacher = debias._run("teacher", data, runs / "teacher-fixed", "fixed", "teacher", tcfg, None)
    out = {}
    for label, _, mode, variant, tmode in (m for m in debias.MODELS if m[0] in (ERASED, PLAIN, NODECONF)):
        out[label] = debias._run("student", data, runs / f"student-{variant}-{mode}", mode, variant, tcfg,
                                 teacher if tmode else None)
    return out


def judge_world(preset: str, seed: int, strength: str, work: Path, epochs: int, device: str,
                cfg: gate.GateConfig) -> list[dict[str, Any]]:
    """The four pairs of one world: oracle difference, the gate's decision, the plain and the old rule.

    Kept in --work per world and settings, so an interrupted study resumes with the next world."""
    cache = work / f"gate-study-{preset}-{strength}-s{seed}-e{epochs}-{cfg.metric}.json"
    # a cache of an older rule (two-sided bound, genre_KL against the logged mix) is recomputed
    key = {**asdict(cfg), "rule": "one-sided lower 95 % bound; content-aware propensities (prior when their ESS is under half); genre_KL against the taste-free mix"}
    if cache.exists() and json.loads(cache.read_text())["gate"] == key:
        return json.loads(cache.read_text())["rows"]
    runs = _models(preset, seed, strength, work, epochs, device)
    ds = load_dataset(_gate_data(work, preset, seed, strength))
    rankers: dict[str, Ranker] = {label: load_ranker(run, device=device) for label, run in runs.items()}
    oracle = {label: evaluate_split(r, ds, "test_oracle").values[cfg.metric] for label, r in rankers.items()}
    val = {label: evaluate_split(r, ds, "val").values[cfg.metric] for label, r in rankers.items()}
    on_gate = {label: evaluate_split(r, ds, "gate") for label, r in rankers.items()}
    by_prior = (gate.inverse_propensities(ds, "gate"), "uploader prior")  # the weights the gate used before
    taste_free = gate.taste_free_weights(ds, "gate")  # one fit per world, shared by its pairs
    rows = []
    for champ, chal in PAIRS:
        scored = gate.score(ds, "gate", rankers[chal], rankers[champ], cfg, taste_free)
        decision = gate.decide(scored, cfg)
        plain = gate.decide({**scored, "comparison": {**scored["comparison"], "deciding": "plain"}}, cfg)
        diff = oracle[chal] - oracle[champ]
        prior = gate.compare(ds, "gate", on_gate[chal], on_gate[champ], cfg, by_prior)["snips"]
        rows.append({"strength": strength, "seed": seed, "champion": champ, "challenger": chal,
                     "oracle_diff": diff, "oracle_promote": diff > cfg.margin,
                     "promote": decision["promote"], "plain_promote": plain["promote"],
                     "old_rule_promote": val[chal] > val[champ] + cfg.margin,
                     "snips": scored["comparison"]["snips"], "plain": scored["comparison"]["plain"], "snips_prior": prior,
                     "prior_promote": prior["lower95"] > cfg.margin, "propensities": scored["comparison"]["propensities"],
                     "taste_R2": scored["taste_R2"], "reasons": decision["reasons"]})
        log.info("%s s%d %s -> %s: oracle %+.4f, gate %s (SNIPS %+.4f [%+.4f, %+.4f]), plain %s", strength, seed, champ, chal,
                 diff, decision["promote"], rows[-1]["snips"]["diff"], *rows[-1]["snips"]["ci95"], plain["promote"])
    safeio.write_json(cache, {"gate": key, "rows": rows})
    return rows


def summary(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": len(rows)}
    for r in rows:  # the interval alone, without floor and bias guard: which part of the rule decided
        r["interval_promote"] = r["snips"]["lower95"] > margin
    for key in ("promote", "interval_promote", "prior_promote", "plain_promote", "old_rule_promote"):
        both: dict[tuple[Any, ...], bool] = {}  # a pair agrees when both of its orders do
        for r in rows:
            k = (r["strength"], r["seed"], frozenset((r["champion"], r["challenger"])))
            both[k] = both.get(k, True) and r[key] == r["oracle_promote"]
        out[key] = {"agree": sum(r[key] == r["oracle_promote"] for r in rows), "pairs_agree": sum(both.values()),
                    "harmful": sum(r[key] and r["oracle_diff"] < -margin for r in rows)}
    out["n_pairs"] = len({(r["strength"], r["seed"], frozenset((r["champion"], r["challenger"]))) for r in rows})
    return out


def to_markdown(rows: list[dict[str, Any]], summ: dict[str, Any], metric: str) -> str:
    short = {ERASED: "erased", PLAIN: "plain", NODECONF: "w/o deconf"}
    yn = {True: "promote", False: "keep"}
    lines = [f"| strength | seed | champion → challenger | oracle Δ {metric} | oracle says | gate: SNIPS Δ [95 %], one-sided lower 95 % bound | gate | agrees "
             "| SNIPS with the uploader prior: Δ, lower bound | gate on it | plain Δ [95 %] | gate on plain | old rule (val points) | taste R² champion / challenger |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, p, e = r["snips"], r["plain"], r["snips_prior"]
        lines.append(f"| {r['strength']} | {r['seed']} | {short[r['champion']]} → {short[r['challenger']]} | {r['oracle_diff']:+.3f} "
                     f"| {yn[r['oracle_promote']]} | {s['diff']:+.3f} [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}], {s['lower95']:+.3f} | {yn[r['promote']]} "
                     f"| {'yes' if r['promote'] == r['oracle_promote'] else '**no**'} "
                     f"| {e['diff']:+.3f}, {e['lower95']:+.3f} | {yn[r['prior_promote']]} "
                     f"| {p['diff']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {yn[r['plain_promote']]} "
                     f"| {yn[r['old_rule_promote']]} | {r['taste_R2']['champion']:.2f} / {r['taste_R2']['challenger']:.2f} |")
    n, m = summ["pairs"], summ["n_pairs"]
    lines.append("")
    names = {"promote": "the gate (SNIPS, content-aware propensities)",
             "interval_promote": "its SNIPS lower bound alone (no floor, no bias guard)",
             "prior_promote": "the lower bound of SNIPS with the uploader prior (the gate before)",
             "plain_promote": "the same gate on the plain estimate", "old_rule_promote": "the old rule (val points, margin)"}
    lines.append("| rule | decisions agreeing with the oracle | pairs agreeing in both orders | harmful promotions |")
    lines.append("|---|---|---|---|")
    for key, name in names.items():
        lines.append(f"| {name} | {summ[key]['agree']}/{n} | {summ[key]['pairs_agree']}/{m} | {summ[key]['harmful']} |")
    return "\n".join(lines)


def write_section(out: Path, text: str, begin: str, end: str) -> None:
    """Replace the section of ``out`` between ``begin`` and ``end`` (appended when they are missing); the rest is kept."""
    section = f"{begin}\n{text}\n{end}"
    old = out.read_text() if out.exists() else "# Results\n"
    new = (old[:old.index(begin)] + section + old[old.index(end) + len(end):] if begin in old and end in old
           else old.rstrip() + "\n\n" + section + "\n")
    safeio.write_text(out, new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strengths", nargs="+", choices=[s for s in CONFOUNDING if CONFOUNDING[s] > 0], default=["moderate", "strong"])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--margin", type=float, default=gate.GateConfig.margin)
    p.add_argument("--metric", default=gate.GateConfig.metric, choices=gate.GATE_METRICS,
                   help="the gate metric; the oracle difference is of the same metric")
    p.add_argument("--work", type=Path, default=None, help="datasets and runs (default: $DECCM_HOME/bench/debias, shared with debias.py)")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    work = args.work or config.state_path("bench", "debias")
    cfg = gate.GateConfig(metric=args.metric, margin=args.margin, floor=0.0)  # the study asks about the comparison; floors are the deployment's
    device = config.resolve_device(args.device)
    t0 = time.perf_counter()
    rows = [r for seed in args.seeds for strength in args.strengths  # seed by seed: both strengths are covered early
            for r in judge_world(args.preset, seed, strength, work, args.epochs, str(device), cfg)]
    summ = summary(rows, cfg.margin)
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    head = (f"_Generated by `python benchmarks/gate_study.py {shlex.join(sys.argv[1:])}` — preset {args.preset}, "
            f"{args.epochs} epochs, seeds {args.seeds}, gate margin {cfg.margin}, {cfg.n_boot} paired resamples over clips, "
            f"{hw}, {(time.perf_counter() - t0) / 60:.1f} min (runs reused from --work are not retrained)._\n\n")
    begin, end = markers(args.preset, args.epochs, cfg.metric)
    write_section(args.out, head + to_markdown(rows, summ, cfg.metric), begin, end)
    safeio.write_json(args.out.with_name(f"gate_study-{args.preset}-e{args.epochs}-{cfg.metric}.json"), {"rows": rows, "summary": summ, "gate": asdict(cfg), "epochs": args.epochs})
    print(to_markdown(rows, summ, cfg.metric))


if __name__ == "__main__":
    main()
