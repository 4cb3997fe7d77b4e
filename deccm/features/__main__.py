"""``deccm features …`` / ``python -m deccm.features …``: extract video or music features from media files."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deccm import logsetup as _log

log = logging.getLogger("deccm.features")


def build_parser(prog: str = "deccm features") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="kind", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--in", dest="inputs", type=Path, required=True,
                        help="a directory (searched recursively by media extension) or a manifest CSV with columns id,path "
                             "(paths relative to the CSV)")
    common.add_argument("--out", type=Path, required=True, help="output dir; the store goes to OUT/features/<kind>/")
    common.add_argument("--workers", type=int, default=1, help="parallel processes over files (default 1)")
    common.add_argument("--strict", action="store_true", help="stop with an error at the first file that cannot be used")
    common.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    common.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads when --workers 1 (default 1, like each worker of a pool: more threads "
                             "spin for CPU on a shared machine; try 2 on an idle one)")
    common.add_argument("--cache-dir", type=Path, default=None, help="content-hash cache (default $DECCM_HOME/cache/features)")
    common.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("videos", parents=[common], help="visual features of video clips")
    v.add_argument("--backbone", choices=["efficientnet-lite0", "resnet50"], default="efficientnet-lite0",
                   help="efficientnet-lite0 (1280-d, ImageNet weights shipped; default) or resnet50 (2048-d)")
    v.add_argument("--resnet-weights", type=Path, default=None,
                   help="torchvision resnet50 state dict (else $DECCM_RESNET50_WEIGHTS, else torch hub cache)")
    v.add_argument("--allow-untrained", action="store_true", help="run ResNet-50 with random (seeded) weights when none are found")
    v.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (default 1)")
    v.add_argument("--max-frames", type=int, default=16, help="at most this many frames per clip, evenly spread (default 16)")
    v.add_argument("--max-seconds", type=float, default=600.0, help="use only the first N seconds of a clip (default 600)")
    v.add_argument("--pool", choices=["mean", "meanmax"], default="mean", help="pool frame features by mean or mean‖max")
    v.add_argument("--motion", action="store_true",
                   help="append the 8-d motion block (frame change, cuts per second, brightness, contrast, warmth, "
                        "saturation, edges from small frames at 4 fps): motion and editing a CNN on sparse frames misses")

    m = sub.add_parser("music", parents=[common], help="256-d music features (VGGish ‖ eGeMAPS + librosa descriptors)")
    m.add_argument("--vggish-weights", type=Path, default=None,
                   help="torchvggish state dict (else $DECCM_VGGISH_WEIGHTS, else an untrained, seeded VGGish)")
    m.add_argument("--max-seconds", type=float, default=60.0, help="use only the first N seconds of a track (default 60)")
    m.add_argument("--norm-from", type=Path, default=None,
                   help="a music store (or --out dir) whose norm_mean/norm_std to apply instead of fitting on this run")
    return p


def main(argv: list[str] | None = None, prog: str = "deccm features") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    from deccm.features import batch, decode
    from deccm.features.spec import SpecMismatch
    from deccm.features.store import StoreError, load_store
    from deccm.features.weights import WeightsError

    opts: dict = {}
    if args.kind == "videos":
        opts = dict(backbone=args.backbone, resnet_weights=args.resnet_weights, allow_untrained=args.allow_untrained,
                    fps=args.fps, max_frames=args.max_frames, max_seconds=args.max_seconds, pool=args.pool, motion=args.motion)
    else:
        opts = dict(vggish_weights=args.vggish_weights, max_seconds=args.max_seconds)
    try:
        if args.kind == "music" and args.norm_from is not None:
            ref = load_store(args.norm_from, kind="music")
            if ref.norm_mean is None or ref.norm_std is None:
                raise StoreError(f"{args.norm_from}: music store has no normalisation statistics")
            opts["norm"] = (ref.norm_mean, ref.norm_std)
        store = batch.extract_batch(args.kind, args.inputs, args.out, workers=args.workers, strict=args.strict,
                                    device=args.device, cache_dir=args.cache_dir, use_cache=not args.no_cache,
                                    progress=not args.no_progress, threads=args.threads, **opts)
    except batch.StrictFailure as e:
        print(f"error (--strict): {e}", file=sys.stderr)
        return 1
    except (ValueError, StoreError, WeightsError, SpecMismatch, decode.DecodeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = batch.store_dir(args.out, args.kind)
    run = store.run
    print(f"wrote {len(store)} {args.kind} feature vectors ({store.spec['dims']}-d, {store.spec['name']}, "
          f"spec {store.spec['spec_id']}) to {out}")
    print(f"  {run['extracted']} extracted, {run['cached']} from cache, {run['failed']} failed"
          + (f" (listed in {out / 'failures.csv'})" if run["failed"] else ""))
    if not store.spec["trained"]:
        print(f"  warning: {batch.untrained_message(args.kind)}", file=sys.stderr)
    if run["inputs"] and not len(store):
        print("error: no file could be used", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.features"))
