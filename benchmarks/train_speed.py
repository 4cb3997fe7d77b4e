"""Training throughput (rows/s at batch 1024) and evaluation time at the original scale.

Uses the synthetic ``tt150k`` preset (150k videos, 3,003 tracks; generated once into
--data if missing): one teacher epoch on PGC pairs, one student epoch on UGC rows (both
modes), then the full evaluation of the 15k-row test split (sampled protocol + full-catalog
ranking + bias metrics). Prints peak RSS at the end.

In the same run, the dense-math bound: the same student's step (forward, backward, Adam) on
one batch gathered once, with no data handling, no logging and no progress bar. The
training loop's rows/s as a share of it says what the loop itself costs.
Usage: python benchmarks/train_speed.py [--data DIR] [--epochs 1] [--device auto] [--bound-steps 30]
"""
from __future__ import annotations

import argparse
import logging
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deccm import config
from deccm.data import Dataset, load_dataset
from deccm.data.synth import synth
from deccm.evaluate import evaluate_split
from deccm.models import ModelConfig
from deccm.runs import load_for_inference, read_config
from deccm.serve import load_ranker
from deccm.train import TrainConfig, train


def dense_bound(run: Path, ds: Dataset, device: torch.device, steps: int, batch: int = 1024) -> float:
    """Rows/s of a student's training step alone: one batch gathered once, then forward, backward and Adam."""
    model, conf = load_for_inference(run, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=conf.train.learning_rate("student"), weight_decay=conf.train.weight_decay)
    t, rows = ds.ugc.train, np.arange(batch)
    x_v = torch.as_tensor(ds.ugc.video_features[t.video[rows]], device=device)
    x_m = torch.as_tensor(ds.ugc.music_features[t.music[rows]], device=device)
    prior = torch.as_tensor(t.prior[rows], device=device)
    music = torch.as_tensor(t.music[rows], device=device, dtype=torch.long)

    def step() -> None:
        loss, _ = model.loss(x_v, x_m, prior, music, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, kernels
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="tt150k dataset dir (generated there if missing)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--bound-steps", type=int, default=30, help="steps timed for the dense-math bound")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="deccm-speed-"))
    data = args.data or tmp / "tt150k"
    if not (data / "dataset.json").exists():
        t = time.perf_counter()
        synth(data, preset="tt150k", seed=0)
        print(f"generated tt150k in {time.perf_counter() - t:.0f} s")
    ds = load_dataset(data)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}, torch {torch.__version__}")
    print(f"data: {ds.manifest['counts']}")
    tc = TrainConfig(epochs=args.epochs, batch_size=1024, device=args.device)
    rows = []
    runs = {}
    for name, kind, mode, teacher in (("teacher fixed", "teacher", "fixed", None), ("teacher faithful", "teacher", "faithful", None),
                                      ("student fixed (DecCM)", "student", "fixed", "teacher fixed"),
                                      ("student faithful", "student", "faithful", "teacher faithful")):
        out = tmp / name.replace(" ", "-").replace("(", "").replace(")", "")
        runs[name] = train(kind, data, out, ModelConfig.for_mode(mode), tc, teacher=runs.get(teacher))
        h = read_config(out).history
        rows.append((name, sum(e["rows_per_s"] for e in h) / len(h), sum(e["seconds"] for e in h) / len(h)))
    print(f"\n{'model':<24} {'train rows/s':>12} {'s/epoch (incl. validation)':>28}")
    for name, rps, sec in rows:
        print(f"{name:<24} {rps:>12.0f} {sec:>28.1f}")
    device = config.resolve_device(args.device)
    print(f"\n{'dense-math bound':<30} {'rows/s':>12} {'loop / bound':>14}")
    for name in ("student fixed (DecCM)", "student faithful"):
        bound = dense_bound(runs[name], ds, device, args.bound_steps)
        loop = next(r[1] for r in rows if r[0] == name)
        print(f"{name:<30} {bound:>12.0f} {100 * loop / bound:>13.0f}%")
    ranker = load_ranker(runs["student fixed (DecCM)"], device=args.device)
    t = time.perf_counter()
    res = evaluate_split(ranker, ds, "test")
    print(f"\nevaluate test split ({len(ds.ugc.test)} rows × {ds.n_tracks} tracks, all metrics): {time.perf_counter() - t:.1f} s "
          f"(HR_w@10 {res.values['HR_w@10']:.4f})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
