"""Clips per second of each feature extractor and of the end-to-end batch, on generated media.

Clips are made by ffmpeg (micro-video-like: H.264 + AAC, default 15 s at 640x360, 30 fps;
music: 30 s stereo AAC in .m4a). Each extractor is warmed up once (model load, numba JIT)
and then timed over all clips, best of --repeat passes; the audio extractors are timed on
decoded audio, the visual ones include decoding (decode + frame sampling + CNN).
End-to-end runs the batch API with a fresh cache, workers 1 and 2 side by side (worker
start-up included), then reruns it on the warm cache.

Usage: python benchmarks/extract.py [--videos 8] [--tracks 8] [--seconds 15] [--threads N] [--repeat 2] [--device auto]
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import media  # noqa: E402  (tests/media.py: ffmpeg clip generation)


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:6.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--tracks", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0, help="video clip length (music tracks are twice this)")
    p.add_argument("--size", default="640x360")
    p.add_argument("--resnet-clips", type=int, default=4, help="ResNet-50 is slow on CPU: time it on fewer clips")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=2, help="timed passes per extractor; the best is reported")
    p.add_argument("--skip-batch", action="store_true", help="only the per-extractor figures")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("DECCM_HOME", str(root / "home"))
        import torch

        from deccm.features import MusicExtractor, VideoExtractor, extract_batch, read_audio, read_frames
        from deccm.features import audio

        logging.basicConfig(level=logging.ERROR)
        if args.threads:
            torch.set_num_threads(args.threads)
        dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, device {dev}")

        t = time.perf_counter()
        vdir, mdir = root / "videos", root / "music"
        vdir.mkdir()
        mdir.mkdir()
        sources = ["testsrc2", "mandelbrot", "smptebars"]
        videos = [media.make_clip(vdir / f"v{i:03d}.mp4", duration=args.seconds, size=args.size, rate=30,
                                  source=sources[i % 3], audio=220.0 * (1 + i % 4)) for i in range(args.videos)]
        tracks = [media.make_audio(mdir / f"m{i:03d}.m4a", duration=2 * args.seconds,
                                   audio="noise" if i % 2 else 110.0 * (1 + i)) for i in range(args.tracks)]
        print(f"generated {len(videos)} clips ({args.seconds:g} s, {args.size}, 30 fps) and {len(tracks)} tracks "
              f"({2 * args.seconds:g} s) in {time.perf_counter() - t:.1f} s\n")

        rows: list[tuple[str, str, str, str]] = []

        def timed(name: str, what: str, fn, items: list) -> None:
            t0 = time.perf_counter()
            fn(items[0])  # warm-up: lazy imports, JIT, first CUDA kernels
            warm = time.perf_counter() - t0
            dt = float("inf")
            for _ in range(args.repeat):  # best pass: the least disturbed by other load on a shared machine
                t0 = time.perf_counter()
                for it in items:
                    fn(it)
                dt = min(dt, time.perf_counter() - t0)
            rows.append((name, what, _rate(len(items), dt), f"{warm:.2f}"))
            print(f"  {name:<28} {_rate(len(items), dt)} clips/s   ({what}; first call {warm:.2f} s)", flush=True)

        print("per extractor:")
        timed("video decode", "PyAV, 1 fps frames at 224 px", lambda v: read_frames(v, fps=1.0), videos)
        eff = VideoExtractor(device=args.device)
        timed("EfficientNet-Lite0", "decode + 1 fps frames + CNN", eff.extract, videos)
        res = VideoExtractor(backbone="resnet50", allow_untrained=True, device=args.device)
        timed("ResNet-50 (untrained)", "decode + 1 fps frames + CNN", res.extract, videos[:args.resnet_clips])
        timed("audio decode", "PyAV → 16 kHz mono", read_audio, tracks)
        decoded = [read_audio(tr).samples for tr in tracks]
        mus = MusicExtractor(device=args.device)
        timed("VGGish (untrained)", "log-mel + CNN, decoded audio", mus.embedder.clip_embedding, decoded)
        timed("openSMILE eGeMAPSv02", "functionals, decoded audio", audio.opensmile_functionals, decoded)
        timed("librosa descriptors", "40 descriptors, decoded audio", audio.librosa_descriptors, decoded)

        if not args.skip_batch:
            print("\nend to end (extract_batch, fresh cache, workers 1 vs 2):")
            for kind, src, n in (("videos", vdir, len(videos)), ("music", mdir, len(tracks))):
                for workers in (1, 2):
                    t0 = time.perf_counter()
                    store = extract_batch(kind, src, root / f"out-{kind}-{workers}", workers=workers, device=args.device,
                                          cache_dir=root / f"cache-{kind}-{workers}", progress=False)
                    dt = time.perf_counter() - t0
                    assert store.run["extracted"] == n, store.run
                    t0 = time.perf_counter()
                    again = extract_batch(kind, src, root / f"out-{kind}-{workers}", workers=workers, device=args.device,
                                          cache_dir=root / f"cache-{kind}-{workers}", progress=False)
                    cached = time.perf_counter() - t0
                    assert again.run["extracted"] == 0
                    rows.append((f"batch {kind}, {workers} worker{'s' if workers > 1 else ''}", "end to end",
                                 _rate(n, dt), f"rerun {cached:.2f} s"))
                    print(f"  {rows[-1][0]:<28} {rows[-1][2]} clips/s   ({n} files in {dt:.1f} s; "
                          f"cached rerun {cached:.2f} s)", flush=True)

        print("\n| extractor | what is timed | clips/s | note |\n|---|---|---:|---|")
        for r in rows:
            note = r[3] if r[3].startswith("rerun") else f"first call {r[3]} s"
            print(f"| {r[0]} | {r[1]} | {r[2].strip()} | {note} |")


if __name__ == "__main__":
    main()
