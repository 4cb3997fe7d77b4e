"""``deccm data …`` / ``python -m deccm.data …``: create, import and check datasets."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deccm import config
from deccm import logsetup as _log
from deccm.data.format import DatasetError

log = logging.getLogger("deccm.data")


def build_parser(prog: str = "deccm data") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="generate the synthetic benchmark with a planted confounder")
    s.add_argument("dst", nargs="?", type=Path, help="output dir (default: $DECCM_HOME/data/synth-PRESET)")
    s.add_argument("--preset", choices=["tiny", "reduced", "small", "tt150k"], default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--confounding", choices=["none", "moderate", "strong"], default="none",
                   help="how strongly the uploader's genre taste shapes their videos (taste -> video path: "
                        "s = 0 / 3 / 8); anything but none opens the backdoor video <- taste -> music")
    s.add_argument("--taste-video", type=float, metavar="S", help="the taste -> video strength itself (overrides --confounding)")
    s.add_argument("--mediated", choices=["none", "moderate", "strong"], default="none",
                   help="how strongly the uploader's taste pulls the video's *content* toward their genres (taste -> "
                        "content -> music: t = 0 / 3 / 8); that part of the taste is real content and does predict the music")
    s.add_argument("--taste-content", type=float, metavar="T", help="the mediated strength itself (overrides --mediated)")
    s.add_argument("--gamma", type=float, help="uploader bias of the logged choices (preset default 1.5; 0 = unconfounded logs)")
    s.add_argument("--overwrite", action="store_true", help="replace DST (only once the new data is complete)")

    v = sub.add_parser("validate", help="run every check on a dataset and print a summary")
    v.add_argument("dir", type=Path)
    v.add_argument("--no-hashes", action="store_true", help="skip verifying file sha256 against the manifest")

    c = sub.add_parser("demo-corpus", help="make a real-media demo corpus (rendered scores or recorded music, generated "
                                           "clips) offline")
    c.add_argument("dst", nargs="?", type=Path, help="output dir (default: $DECCM_HOME/data/demo, demo-tiny for --size tiny, "
                                                    "recorded / recorded-tiny as named)")
    c.add_argument("--size", choices=["tiny", "default", "recorded-tiny", "recorded"], default="default",
                   help="tiny: 108 tracks of 3-4 s and 176 clips in under a minute; default: 160 rendered tracks of "
                        "10-14 s and 1,600 clips of 4-8 s in about 7 min on 2 cores; recorded: a 30 s excerpt of every "
                        "track of Debian's soundtrack packages (make music-packages installs them) and the same clips; "
                        "recorded-tiny: 5 s excerpts of about 130 of them, for tests")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=2, help="processes for rendering, threads for clips, extractor workers")
    c.add_argument("--overwrite", action="store_true", help="replace DST (only once the new data is complete)")

    a = sub.add_parser("assemble", help="build a dataset from your own feature stores, usage logs and track metadata",
                       description="Assemble your feature stores (python -m deccm.features videos|music --out DIR), usage "
                                   "logs and track metadata into a validated dataset. STORE is the --out DIR of the "
                                   "features CLI or its features/<kind>/ directory. Safe to re-run: the same inputs "
                                   "return the existing dataset.")
    a.add_argument("dst", nargs="?", type=Path, help="output dir (default: $DECCM_HOME/data/NAME)")
    a.add_argument("--videos", required=True, type=Path, metavar="STORE", help="feature store of the uploaded videos")
    a.add_argument("--tracks", required=True, type=Path, metavar="STORE", help="music feature store of the track catalog")
    a.add_argument("--logs", required=True, type=Path, metavar="CSV", help="usage logs: video,track[,uploader]")
    a.add_argument("--tracks-meta", required=True, type=Path, metavar="CSV",
                   help="id,title,artist,genre,licence,path (path = audio file relative to the CSV; genre may be empty)")
    a.add_argument("--pgc", type=Path, metavar="STORE", help="videos feature store of professionally edited segments")
    a.add_argument("--pgc-pairs", type=Path, metavar="CSV", help="segment,track pairs for --pgc")
    a.add_argument("--seed", type=int)
    a.add_argument("--val-fraction", type=float, help="share of the logged videos in val (default 0.1)")
    a.add_argument("--test-fraction", type=float, help="share of the logged videos in test (default 0.2)")
    a.add_argument("--gate-fraction", type=float,
                   help="share of the logged videos held out for the promotion gate (default 0.1; 0 = none, the gate then uses val)")
    a.add_argument("--name", help="dataset name in the manifest and default DST (default: assembled)")
    a.add_argument("--overwrite", action="store_true", help="replace a different dataset at DST (only once the new one is complete)")

    i = sub.add_parser("import-legacy", help="convert the authors' data_matching/ + data_pgc/ layout")
    i.add_argument("src", type=Path, help="folder holding data_matching/ (and optionally data_pgc/)")
    i.add_argument("dst", type=Path)
    i.add_argument("--trust-pickle", action="store_true",
                   help="allow reading the authors' pickled object arrays (can execute code: only for files you trust)")
    i.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str = "deccm data") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    try:
        if args.cmd == "synth":
            from deccm.data.synth import CONFOUNDING, MEDIATED, synth

            over = {"taste_video": CONFOUNDING[args.confounding] if args.taste_video is None else args.taste_video,
                    "taste_content": MEDIATED[args.mediated] if args.taste_content is None else args.taste_content}
            if args.gamma is not None:
                over["gamma"] = args.gamma
            name = f"synth-{args.preset}" + (f"-tv{over['taste_video']:g}" if over["taste_video"] else "") + (
                f"-tc{over['taste_content']:g}" if over["taste_content"] else "") + (
                f"-g{args.gamma:g}" if args.gamma is not None else "")
            out = synth(args.dst or config.data_dir(name), preset=args.preset, seed=args.seed, overwrite=args.overwrite, **over)
            print(f"wrote synthetic dataset ({args.preset}, seed {args.seed}, taste -> video {over['taste_video']:g}, "
                  f"taste -> content {over['taste_content']:g}) to {out}")
        elif args.cmd == "demo-corpus":
            from deccm.data.corpus import build_corpus, default_dest

            out, tm = build_corpus(args.dst or default_dest(args.size), size=args.size, seed=args.seed,
                                   workers=args.workers, overwrite=args.overwrite)
            print(f"wrote demo corpus ({args.size}, seed {args.seed}) to {out} in {tm.total:.0f} s "
                  f"(render {tm.render:.0f}, encode {tm.encode:.0f}, extract {tm.extract:.0f}, assemble {tm.assemble:.0f})")
        elif args.cmd == "validate":
            from deccm.data.validate import validate_dir

            report = validate_dir(args.dir, verify_hashes=not args.no_hashes)
            print(report.table())
            if not report.ok:
                print(f"\n{len(report.problems)} problem(s):", file=sys.stderr)
                for prob in report.problems:
                    print(f"  {prob}", file=sys.stderr)
                return 1
            print(f"\n{args.dir}: OK")
        elif args.cmd == "assemble":
            from deccm.data.assemble import DEFAULT_NAME, AssembleConfig, assemble, summary

            keys = ("videos", "tracks", "logs", "tracks_meta", "pgc", "pgc_pairs", "seed", "val_fraction", "test_fraction", "gate_fraction", "name")
            cfg = AssembleConfig.from_dict({k: getattr(args, k) for k in keys if getattr(args, k) is not None})
            out = assemble(cfg, args.dst or config.data_dir(cfg.name or DEFAULT_NAME), overwrite=args.overwrite)
            print(summary(out))
        elif args.cmd == "import-legacy":
            from deccm.data.legacy import import_legacy

            out = import_legacy(args.src, args.dst, trust_pickle=args.trust_pickle, overwrite=args.overwrite)
            print(f"imported {args.src} to {out}")
    except (DatasetError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.data"))
