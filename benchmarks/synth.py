"""Generation time and peak memory of each synthetic preset.

Each preset runs in a fresh subprocess so that its peak RSS is its own.
Usage: python benchmarks/synth.py [--presets tiny small tt150k] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time, logging
logging.disable(logging.INFO)
from deccm.data.synth import synth
from deccm.data.validate import load_dataset
t = time.perf_counter(); path = synth(sys.argv[1], preset=sys.argv[2], seed=0); gen = time.perf_counter() - t
t = time.perf_counter(); load_dataset(path); val = time.perf_counter() - t
size = sum(p.stat().st_size for p in path.rglob('*') if p.is_file())
print(json.dumps({"generate_s": gen, "load_validate_s": val, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "disk_mb": size / 2**20}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "tt150k"])
    p.add_argument("--out", type=Path, default=None, help="where to write the datasets (default: a temp dir, removed)")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"{'preset':<8} {'generate s':>11} {'load+validate s':>16} {'peak RSS MB':>12} {'disk MB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for preset in args.presets:
            r = subprocess.run([sys.executable, "-c", CHILD, str(root / preset), preset], capture_output=True, text=True, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{preset:<8} {m['generate_s']:>11.1f} {m['load_validate_s']:>16.2f} {m['peak_rss_mb']:>12.0f} {m['disk_mb']:>9.0f}")


if __name__ == "__main__":
    main()
