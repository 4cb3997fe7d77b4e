"""Feature extraction with one worker on a busy machine: torch threads and OpenMP's wait policy.

Extracts the same clips with ``python -m deccm.features videos --workers 1 --no-cache`` in a
subprocess, idle and beside a CPU hog (one busy process per core minus one), with two torch
threads under OpenMP's ACTIVE (spinning, its default) and PASSIVE wait policy, and with the
default one thread (docs/benchmarks.md).
Usage: python benchmarks/contention.py [--clips 40]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import media  # noqa: E402 - the test helpers make the clips with the bundled ffmpeg


def run(clips: Path, out: Path, env: dict[str, str], threads: str) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "deccm.features", "videos", "--in", str(clips), "--out", str(out), "--fps", "0.5",
           "--no-cache", "--no-progress", "--workers", "1", "--threads", threads]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=40)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deccm-bench-contention-"))
    clips = work / "clips"
    clips.mkdir()
    for i in range(args.clips):
        media.make_clip(clips / f"c{i:03d}.mp4", duration=10.0, source=("testsrc2", "mandelbrot", "smptebars")[i % 3], audio=None)
    base = {**os.environ, "DECCM_HOME": str(work / "home")}
    cases = [("2 threads, ACTIVE wait (OpenMP's default)", {"OMP_WAIT_POLICY": "ACTIVE"}, "2"),
             ("2 threads, PASSIVE wait", {"OMP_WAIT_POLICY": "PASSIVE"}, "2"),
             ("1 thread (deccm's default)", {}, "1")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.clips} clips of 10 s, EfficientNet-Lite0 at 0.5 fps")
    print(f"{'case':<42}{'idle wall':>10}{'idle CPU':>10}{'busy wall':>11}{'busy CPU':>10}")
    for name, extra, threads in cases:
        idle = run(clips, work / "out", {**base, **extra}, threads)
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(max(1, (os.cpu_count() or 2) - 1))]
        try:
            busy = run(clips, work / "out", {**base, **extra}, threads)
        finally:
            for h in hogs:
                h.kill()
        print(f"{name:<42}{idle[0]:>9.1f}s{idle[1]:>9.1f}s{busy[0]:>10.1f}s{busy[1]:>9.1f}s")


if __name__ == "__main__":
    main()
