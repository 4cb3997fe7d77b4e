"""How long `make demo` takes from a fresh state dir until the app serves, and a later start.

Runs ``make demo DEMO_SOURCE=<source>`` with ``DECCM_HOME`` in a new temp folder (cold
numba and feature caches, empty registry), polls ``GET /healthz`` until it answers, stops
the app, starts it again and times that too. ``--remove-packages`` first removes the
recorded catalog's Debian packages (and apt's download cache), so the figure includes
downloading and installing them as on a fresh machine. The venv is taken as it is (its
first creation is timed separately: README).

Usage: python benchmarks/first_run.py [--source recorded|demo] [--remove-packages] [--port 7871]
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deccm.data.corpus.recorded import PACKAGES  # noqa: E402


def serve_time(source: str, home: Path, port: int, log: Path, limit_s: float = 1800) -> tuple[float, dict]:
    """Seconds from ``make demo`` until /healthz answers; the health report; the app is stopped after."""
    env = {**os.environ, "DECCM_HOME": str(home), "DEMO_PORT": str(port)}
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
        raise RuntimeError(f"something already serves on port {port}: stop it or pass --port")
    except OSError:
        pass
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "demo", f"DEMO_SOURCE={source}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.perf_counter() - t0 < limit_s:
            if proc.poll() is not None:
                raise RuntimeError(f"make demo exited with {proc.returncode} before serving; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    import json

                    return time.perf_counter() - t0, json.loads(r.read())
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"not serving after {limit_s:.0f} s; see {log}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="recorded", choices=["recorded", "demo"])
    p.add_argument("--remove-packages", action="store_true", help="apt-get remove the soundtrack packages first")
    p.add_argument("--port", type=int, default=7871)
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; source {args.source}")
    if args.remove_packages:
        subprocess.run(["apt-get", "remove", "-y", "-qq", *(pkg.name for pkg in PACKAGES)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "clean"], check=True)
        print("removed the soundtrack packages and apt's download cache: the first run installs them")
    home = Path(tempfile.mkdtemp(prefix="deccm-first-run-"))
    first, health = serve_time(args.source, home, args.port, home / "first.log")
    print(f"first run to serving: {first:.0f} s ({first / 60:.1f} min); serving v{health.get('version')} "
          f"trained on {health.get('trained_on')}")
    later, _ = serve_time(args.source, home, args.port, home / "later.log")
    print(f"later start to serving: {later:.1f} s   (logs and state in {home})")


if __name__ == "__main__":
    main()
