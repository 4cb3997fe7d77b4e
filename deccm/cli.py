"""The ``deccm`` console script: one subcommand per stage, each also ``python -m deccm.<stage>``."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("deccm.data.__main__", "create, import and validate datasets"),
    "features": ("deccm.features.__main__", "extract video/music features from media files"),
    "train": ("deccm.train", "train a teacher, student or baseline"),
    "evaluate": ("deccm.evaluate", "score models on a split: tables, JSON, comparisons"),
    "recommend": ("deccm.serve", "rank a trained run's music catalog for a video clip"),
    "registry": ("deccm.registry", "the deccm-student model registry: list, promote, rollback"),
    "pipeline": ("deccm.pipeline", "run the retraining pipeline's stages in this process (no Airflow)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: deccm COMMAND [ARGS...]\n\ncommands:")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<10} {helptext}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f"deccm {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
