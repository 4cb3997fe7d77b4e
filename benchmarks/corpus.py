"""Time ``deccm data demo-corpus`` per stage at each size, from a fresh state dir (no feature cache).

Stages: render (music21 parse + synthesis + MP3 encode of every track), encode (every
clip drawn with ffmpeg), extract (music + video features), assemble (rows + atomic
write). Each size runs in a fresh subprocess with its own ``DECCM_HOME``; CPU seconds
include the worker processes and ffmpeg children. ``--rerun`` builds the size a second
time in the same state dir to show what the feature cache saves.
Usage: python benchmarks/corpus.py [--sizes tiny default] [--workers 2] [--rerun]
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
import json, logging, os, resource, sys, time
logging.disable(logging.WARNING)
from deccm.data.corpus import build_corpus
dst, size, workers, overwrite = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
load0 = os.getloadavg()[0]
path, tm = build_corpus(dst, size=size, workers=workers, overwrite=overwrite)
ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
media = sum(p.stat().st_size for p in (path / "media").rglob("*") if p.is_file())
total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
print(json.dumps({"render": tm.render, "encode": tm.encode, "extract": tm.extract, "assemble": tm.assemble,
                  "total": tm.total, **tm.detail, "cpu_s": sum(r.ru_utime + r.ru_stime for r in ru),
                  "peak_rss_mb": max(r.ru_maxrss for r in ru) / 1024, "media_mb": media / 2**20, "disk_mb": total / 2**20,
                  "load_before": load0, "load_after": os.getloadavg()[0]}))
"""


def run(home: Path, size: str, workers: int, overwrite: bool) -> dict:
    env = {**os.environ, "DECCM_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(home / "data" / size), size, str(workers), "1" if overwrite else "0"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{size} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "default"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rerun", action="store_true", help="also time a second build with the feature cache warm")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"NUMBA_CACHE_DIR {'set' if os.environ.get('NUMBA_CACHE_DIR') else 'unset (librosa JIT compiles cold)'}")
    cols = ("render", "encode", "extract", "assemble", "total", "cpu_s", "peak_rss_mb", "disk_mb", "load_before", "load_after")
    print(f"{'size':<16}" + "".join(f"{c:>12}" for c in cols))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            home = Path(tmp) / size
            runs = [("", run(home, size, args.workers, False))]
            if args.rerun:
                runs.append((" (rerun)", run(home, size, args.workers, True)))
            for tag, m in runs:
                print(f"{size + tag:<16}" + "".join(f"{m[c]:>12.1f}" for c in cols))
                print(f"{'':<16}  extract: music {m['extract_music_s']:.1f} s, video {m['extract_video_s']:.1f} s; "
                      f"render CPU {m['render_cpu_s']:.1f} s + MP3 encode CPU {m['audio_encode_cpu_s']:.1f} s (summed over workers)")


if __name__ == "__main__":
    main()
