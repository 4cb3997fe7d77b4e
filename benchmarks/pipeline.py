"""Wall time of each retraining-pipeline task, from a fresh state dir, and of an unchanged rerun.

Runs ``deccm.pipeline.run_all`` (the same stage functions the Airflow DAG's tasks call, in
the same order) in a subprocess with its own ``DECCM_HOME`` per source, then once more in
the same state dir: the rerun shows what the idempotent stages skip (cached data, finished
runs, an already registered version). Airflow's own scheduling overhead is not included.
Usage: python benchmarks/pipeline.py [--sources synth-small demo] [--epochs 50]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, logging, os, resource, sys
logging.disable(logging.WARNING)
os.environ.setdefault("TQDM_DISABLE", "1")
from deccm.pipeline import run_all
r = run_all({"source": sys.argv[1], "epochs": int(sys.argv[2]), "device": "cpu"})
ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print(json.dumps({"seconds": r["seconds"], "total_s": r["total_s"], "version": r["version"], "promoted": r["promoted"],
                  "cpu_s": sum(x.ru_utime + x.ru_stime for x in ru), "peak_rss_mb": max(x.ru_maxrss for x in ru) / 1024}))
"""
STAGES = ("prepare data", "train teacher", "train student", "evaluate", "gate", "register")


def run(home: Path, source: str, epochs: int) -> dict:
    env = {**os.environ, "DECCM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-c", CHILD, source, str(epochs)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{source} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", nargs="+", default=["synth-small", "demo"])
    p.add_argument("--epochs", type=int, default=50)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; epochs {args.epochs}")
    rows = []
    for source in args.sources:
        with tempfile.TemporaryDirectory(prefix=f"deccm-bench-pipeline-{source}-") as tmp:  # GBs of runs: removed after
            first = run(Path(tmp), source, args.epochs)
            again = run(Path(tmp), source, args.epochs)
        rows.append((source, first, again))
    head = f"{'task':<16}" + "".join(f"{s + ' first':>18}{s + ' rerun':>18}" for s, _, _ in rows)
    print(head)
    for stage in STAGES:
        print(f"{stage:<16}" + "".join(f"{f['seconds'].get(stage, 0):>17.1f}s{a['seconds'].get(stage, 0):>17.1f}s" for _, f, a in rows))
    print(f"{'total':<16}" + "".join(f"{f['total_s']:>17.1f}s{a['total_s']:>17.1f}s" for _, f, a in rows))
    print(f"{'CPU seconds':<16}" + "".join(f"{f['cpu_s']:>17.0f}s{a['cpu_s']:>17.0f}s" for _, f, a in rows))
    print(f"{'peak RSS':<16}" + "".join(f"{f['peak_rss_mb']:>15.0f} MB{a['peak_rss_mb']:>15.0f} MB" for _, f, a in rows))
    print(f"{'registered':<16}" + "".join(f"{'v' + f['version'] + (' champion' if f['promoted'] else ''):>18}"
                                          f"{'v' + a['version'] + (' champion' if a['promoted'] else ''):>18}" for _, f, a in rows))


if __name__ == "__main__":
    main()
