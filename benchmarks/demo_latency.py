"""Demo latency: upload → ranking through gradio_client against a running app, sequential and concurrent.

Each request uploads a 10 s clip (H.264 + AAC, 640x360, 30 fps, made by ffmpeg) and calls
``/suggest`` (k = 10): upload, queue, checks, video features, ranking, the comparison
model's ranking, and the response, as a client sees it. Files in the response are not
downloaded (a browser streams the audio when it is played). After 2 warm-up requests:
``--requests`` sequential requests (p50 / p95 / max), then ``--clients`` clients at once,
each with its own connection, sending ``--requests`` in all (throughput and latency under
load). The server's own time (checks + features + ranking, from the result's timings) is
shown beside the client's. Then the **full answer** as the page gets it for ``--answers``
clips the server has never seen: ``/suggest`` (ranking, each track's moment, the top five
moments rendered for the players) and then ``/preview`` (the top moment muxed under the
clip: what "download" gives), one client, p50 / p90 / max.

Without ``--url`` the app is started here (``python demo/app.py --device cpu``) on the
champion of ``--home`` (default ``$DECCM_HOME/bench/demo``, or ``bench/<source>``); if that
state dir has no champion, ``deccm.pipeline.ensure_champion`` builds ``--source`` (default the
tiny demo corpus; ``recorded`` is ``make demo``'s catalog) and trains and registers one first
(minutes, once). Load average before and after is printed: other work on the machine
shows up in the figures.

Usage: python benchmarks/demo_latency.py [--url URL | --home DIR] [--source demo-tiny|recorded] [--requests 20]
       [--clients 4] [--seconds 10] [--answers 12]
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import media  # noqa: E402  (tests/media.py: ffmpeg clip generation)


def ensure_champion(home: Path, source: str) -> None:
    """A registered champion in ``home`` (``deccm.pipeline.ensure_champion`` on ``source`` if there is none: the tiny
    demo corpus with a short loop, or a full corpus as ``make demo`` builds it)."""
    os.environ["DECCM_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from deccm import pipeline

    t = time.perf_counter()
    params = {"source": source, "device": "cpu"}
    if source == "demo-tiny":
        params.update(epochs=20, batch_size=64, gate_floor=0.0)
    version = pipeline.ensure_champion(params)
    print(f"champion: version {version} in {home} ({time.perf_counter() - t:.0f} s to make sure)", flush=True)


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DECCM_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "demo" / "app.py"), "--port", str(port), "--device", "cpu"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    t = time.perf_counter()
    while time.perf_counter() - t < 180:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    print(f"app up at {url} in {time.perf_counter() - t:.1f} s", flush=True)
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the app did not answer within 180 s")


def one(client: object, clip: str) -> tuple[float, float]:
    from gradio_client import handle_file

    t = time.perf_counter()
    out = client.predict(handle_file(clip), 10, api_name="/suggest")  # type: ignore[attr-defined]
    took = time.perf_counter() - t
    raw = out[9]
    if raw.get("error"):
        raise SystemExit(f"the app refused the clip: {raw['error']}")
    return took, float(raw["timings"]["total"])


def full_answer(client: object, clip: str) -> float:
    """Seconds for ``/suggest`` then ``/preview`` of one clip (the page chains them), checking both answered."""
    from gradio_client import handle_file

    t = time.perf_counter()
    raw = client.predict(handle_file(clip), 10, api_name="/suggest")[9]  # type: ignore[attr-defined]
    if raw.get("error") or not all(s.get("moment") for s in raw["suggestions"]):
        raise SystemExit(f"no ranking with moments for {clip}: {raw.get('error')}")
    shown = client.predict(handle_file(clip), api_name="/preview")[0]  # type: ignore[attr-defined]
    if not shown:
        raise SystemExit(f"no preview for {clip}")
    return time.perf_counter() - t


def run_threads(worker: Callable[[int], None], args: list[int]) -> float:
    """``worker(a)`` for each ``a`` at once, one thread each; the wall seconds until all are done."""
    threads = [threading.Thread(target=worker, args=(a,)) for a in args]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(xs, q))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running app (else one is started here)")
    p.add_argument("--home", type=Path, help="state dir with (or for) the champion when the app is started here")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--size", default="640x360")
    p.add_argument("--source", default="demo-tiny",
                   help="corpus of the champion built when --home has none (demo-tiny: minutes; recorded: make demo's)")
    p.add_argument("--answers", type=int, default=12, help="never-seen clips timed through the full answer")
    args = p.parse_args()
    from gradio_client import Client

    proc = None
    url = args.url
    home = None
    if url is None:
        from deccm import config

        home = (args.home or config.state_path("bench", "demo" if args.source == "demo-tiny" else args.source)).resolve()
        ensure_champion(home, args.source)
        proc, url = start_app(home)
    load_before = os.getloadavg()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="deccm-bench-demo-"))
        clip = str(media.make_clip(tmp / "clip.mp4", duration=args.seconds, source="mandelbrot", size=args.size, rate=30,
                                   audio="noise"))
        client = Client(url, verbose=False, download_files=False)
        for _ in range(2):
            one(client, clip)
        seq = [one(client, clip) for _ in range(args.requests)]

        par: list[tuple[float, float]] = []
        lock = threading.Lock()
        per = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]

        def worker(n: int) -> None:
            c = Client(url, verbose=False, download_files=False)
            for _ in range(n):
                r = one(c, clip)
                with lock:
                    par.append(r)

        wall = run_threads(worker, per)

        sources = list(media.VIDEO_SOURCES)[:3]
        answers = [full_answer(client, str(media.make_clip(
            tmp / f"new{i}.mp4", duration=args.seconds, source=sources[i % 3], size=args.size, rate=30, audio=200.0 + 37 * i)))
            for i in range(args.answers)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    load_after = os.getloadavg()

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"clip {args.seconds:g} s {args.size} H.264+AAC; k 10; app {url}")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    head = f"{'':<34}{'requests':>9}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'server p50 s':>14}{'req/s':>8}"
    print(head)
    print("-" * len(head))
    client_s = [c for c, _ in seq]
    server_s = [s for _, s in seq]
    print(f"{'sequential, 1 client':<34}{len(seq):>9}{pct(client_s, 50):>8.2f}{pct(client_s, 95):>8.2f}{max(client_s):>8.2f}"
          f"{pct(server_s, 50):>14.2f}{len(seq) / sum(client_s):>8.2f}")
    client_s = [c for c, _ in par]
    server_s = [s for _, s in par]
    print(f"{f'concurrent, {args.clients} clients':<34}{len(par):>9}{pct(client_s, 50):>8.2f}{pct(client_s, 95):>8.2f}"
          f"{max(client_s):>8.2f}{pct(server_s, 50):>14.2f}{len(par) / wall:>8.2f}")
    print(f"{'full answer, never-seen clips':<34}{len(answers):>9}{pct(answers, 50):>8.2f}{pct(answers, 90):>8.2f}"
          f"{max(answers):>8.2f}{'':>14}{len(answers) / sum(answers):>8.2f}   (p90 in the p95 column)")


if __name__ == "__main__":
    main()
