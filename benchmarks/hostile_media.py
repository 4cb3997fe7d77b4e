"""Hostile uploads against a running demo: each case's outcome, wall time and the server's memory.

The corpus is tests/hostile.py's (made here with ffmpeg; ``--heavy`` makes the 1000 fps
case 40 s long, as it was found). For each case, as an attacker would send it through
``gradio_client``: a good clip's ``/suggest`` first (so the session holds a top track),
then ``/preview`` with the hostile file as the clip, then ``/suggest`` with it. Printed per
case: the outcome (refused, with the reason, or served), each call's wall time, and the
growth of the server's peak RSS (VmHWM of the app's process). A leak check decodes every
preview that comes back and counts frames of the secret clip (solid magenta) the playlist
and concat cases point at; the file route is tried on the secret too.

Then the mixed load, twice: ``--clients`` clients at once, each sending ``--per-client``
requests that alternate a good clip and a hostile one; every answer and the good clips'
latency (p50 / p95 / max) are printed. First every good request sends a clip the server has
never seen (each is decoded); then all send one clip, as visitors send the page's examples
(the server ranks it from the features it remembers, ``deccm.demo.RecentClips``).

Without ``--home`` the champion of ``$DECCM_HOME/bench/demo`` is used (built on the tiny
demo corpus first if missing, as benchmarks/demo_latency.py does).

Usage: python benchmarks/hostile_media.py [--home DIR] [--source demo-tiny] [--clients 8] [--per-client 3] [--heavy]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import hostile  # noqa: E402  (tests/hostile.py: the corpus)
import media  # noqa: E402
from demo_latency import ensure_champion, pct, run_threads, start_app  # noqa: E402


def vm_kb(pid: int, field: str) -> int:
    """VmHWM (peak RSS) or VmRSS of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def secret_frames(path: str) -> int:
    """Frames of a returned video that look like the secret clip (solid magenta)."""
    import av

    n = 0
    with av.open(path) as c:
        for f in c.decode(video=0):
            r, g, b = f.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
            n += int(r > 215 and g < 40 and b > 215)
    return n


def returned_path(out: object) -> str | None:
    """The preview's file from ``/preview``'s (preview, download) answer."""
    out = out[0] if isinstance(out, (list, tuple)) else out
    video = out.get("video", out) if isinstance(out, dict) else out
    if isinstance(video, dict):
        return video.get("path")
    return video if isinstance(video, str) else None


def load(url: str, clients: int, per_client: int, good_clip: object, mix: list[hostile.Case], what: str) -> None:
    """``clients`` clients at once, each sending ``per_client`` /suggest requests, good and hostile alternating."""
    from gradio_client import Client, handle_file

    lat: dict[str, list[float]] = {"good": [], "hostile": []}
    errors: list[str] = []
    lock = threading.Lock()

    connected = [Client(url, verbose=False, download_files=False) for _ in range(clients)]  # set-up is not a request
    ready = threading.Barrier(clients)

    def worker(i: int) -> None:
        c = connected[i]
        ready.wait()  # every client sends its first request at the same moment
        for j in range(per_client):
            is_good = (i + j) % 2 == 0
            k = i * per_client + j
            path = good_clip(k) if is_good else str(mix[k % len(mix)].path)  # type: ignore[operator]
            t = time.perf_counter()
            try:
                r = c.predict(handle_file(path), 10, api_name="/suggest")[9]
            except Exception as e:  # noqa: BLE001 - an unanswered request is what this counts
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                lat["good" if is_good else "hostile"].append(time.perf_counter() - t)
                if is_good and r.get("error"):
                    errors.append(r["error"])

    wall = run_threads(worker, list(range(clients)))
    answered = len(lat["good"]) + len(lat["hostile"])
    print(f"\nmixed load ({what}): {clients} clients x {per_client} requests, good and hostile alternating: "
          f"{answered}/{clients * per_client} answered in {wall:.1f} s, {len(errors)} errors {errors[:3]}")
    for kind, xs in lat.items():
        if xs:
            print(f"  {kind:8s} n={len(xs):2d}  p50 {pct(xs, 50):.2f} s  p95 {pct(xs, 95):.2f} s  max {max(xs):.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, help="state dir with (or for) the champion")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=3)
    p.add_argument("--heavy", action="store_true", help="the 1000 fps case lasts 40 s (as found) instead of 4 s")
    p.add_argument("--source", default="demo-tiny", help="corpus the champion is built on when there is none (default: demo-tiny)")
    args = p.parse_args()
    import httpx
    from gradio_client import Client, handle_file

    from deccm import config

    home = (args.home or config.state_path("bench", "demo")).resolve()
    ensure_champion(home, args.source)
    tmp = Path(tempfile.mkdtemp(prefix="deccm-bench-hostile-"))
    t = time.perf_counter()
    secret = hostile.make_secret(tmp / "private")
    cases = hostile.make_corpus(tmp / "upload", secret, heavy=args.heavy)
    good = str(media.make_clip(tmp / "good.mp4", duration=10.0, source="mandelbrot", size="640x360", rate=30, audio="noise"))
    print(f"corpus: {len(cases)} cases in {time.perf_counter() - t:.0f} s", flush=True)
    proc, url = start_app(home)
    pid = proc.pid
    try:
        client = Client(url, verbose=False, download_files=False)
        for _ in range(2):
            client.predict(handle_file(good), 10, api_name="/suggest")
            client.predict(handle_file(good), api_name="/preview")
        idle_rss, idle_hwm = vm_kb(pid, "VmRSS"), vm_kb(pid, "VmHWM")
        print(f"server after warm-up: RSS {idle_rss / 1e3:.0f} MB, peak {idle_hwm / 1e3:.0f} MB\n")
        print("| case | outcome | /suggest s | /preview s | peak RSS growth MB | secret frames back |")
        print("|---|---|---:|---:|---:|---:|")
        worst = 0.0
        leaked = 0
        for case in cases:
            client.predict(handle_file(good), 5, api_name="/suggest")
            hwm0 = vm_kb(pid, "VmHWM")
            t0 = time.perf_counter()
            shown = client.predict(handle_file(str(case.path)), api_name="/preview")
            t1 = time.perf_counter()
            out = client.predict(handle_file(str(case.path)), 5, api_name="/suggest")
            t2 = time.perf_counter()
            back = returned_path(shown)
            frames = secret_frames(back) if back else 0
            leaked += frames
            raw = out[9]
            outcome = f"refused: {raw['error'].split(': ', 1)[-1][:90]}" if raw.get("error") else \
                f"served (top {len(raw['suggestions'])}{', preview' if back else ''})"
            worst = max(worst, t1 - t0, t2 - t1)
            print(f"| {case.name} | {outcome} | {t2 - t1:.2f} | {t1 - t0:.2f} | {(vm_kb(pid, 'VmHWM') - hwm0) / 1e3:.0f} | {frames} |",
                  flush=True)
        growth = (vm_kb(pid, "VmHWM") - idle_rss) / 1e3
        route = httpx.get(f"{url}gradio_api/file={secret}", timeout=30)
        print(f"\nslowest hostile call {worst:.2f} s; server peak RSS {vm_kb(pid, 'VmHWM') / 1e3:.0f} MB, "
              f"{growth:.0f} MB over its idle RSS; secret frames returned {leaked}; "
              f"file route on the secret: HTTP {route.status_code}")

        mix = [c for c in cases if c.expect == "refused"]
        n = args.clients * args.per_client
        fresh = [str(media.make_clip(tmp / f"good{i}.mp4", duration=10.0, source=("mandelbrot", "testsrc2", "smptebars")[i % 3],
                                     size="640x360", rate=30, audio="noise")) for i in range(n)]
        load(url, args.clients, args.per_client, lambda i: fresh[i], mix, "distinct good clips, none seen before")
        load(url, args.clients, args.per_client, lambda i: good, mix, "one good clip, as visitors send the page's examples")
        print(f"server peak RSS after the loads: {vm_kb(pid, 'VmHWM') / 1e3:.0f} MB")
        print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"load average now {os.getloadavg()[0]:.2f}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
