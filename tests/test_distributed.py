"""Data-parallel training: the same code under `torchrun` with 2 CPU processes (gloo), against one process.

Tolerance: with 2 processes each step's in-batch negatives come from a process's own half of
the batch, so the run is not the single-process run; its best validation HR_w@25 must be
within 0.05 of it. Resume under DDP is exact: a run killed after its second epoch and
resumed ends with the weights of the uninterrupted 2-process run, bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deccm.models import ModelConfig
from deccm.runs import TrainConfig
from deccm.train import train

SCRIPT = textwrap.dedent("""
    import sys
    from deccm.train import VARIANTS, train
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig

    data, out, how, teacher = sys.argv[1:5]

    def crash(entry):  # a kill right after the second epoch was written
        if how == "crash" and entry["epoch"] == 1:
            raise SystemExit(3)

    if how == "teacher":
        train("teacher", data, out, ModelConfig.for_mode("fixed"), TrainConfig(epochs=3, batch_size=64, seed=4, device="cpu"))
    else:
        train("student", data, out, ModelConfig.for_mode("fixed", **VARIANTS["erased"]),
              TrainConfig(epochs=6, batch_size=128, seed=4, device="cpu"), teacher=teacher, variant="erased",
              resume=how == "resume", on_epoch_end=crash)
""")


@pytest.fixture(scope="module")
def setup(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    teacher = train("teacher", tiny_dataset, root / "teacher", ModelConfig.for_mode("fixed"),
                    TrainConfig(epochs=3, batch_size=64, seed=4, device="cpu"))
    (root / "run.py").write_text(SCRIPT)
    return root, teacher, tiny_dataset


def _run(root: Path, data: Path, out: str, how: str, teacher: Path, procs: int) -> subprocess.CompletedProcess[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable]
    tmp = root / f"tmp-{out}"  # torchrun's rendezvous folders (torchelastic_*) stay out of the machine's /tmp
    tmp.mkdir(exist_ok=True)
    return subprocess.run([*launch, str(root / "run.py"), str(data), str(root / out), how, str(teacher)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp)})


def _history(run: Path) -> list[dict]:
    return json.loads((run / "config.json").read_text())["history"]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_exactly(setup: tuple[Path, Path, Path]) -> None:
    root, teacher, data = setup
    for out, how, procs in (("one", "full", 1), ("two", "full", 2), ("cut", "crash", 2), ("teacher2", "teacher", 2)):
        r = _run(root, data, out, how, teacher, procs)
        assert (r.returncode == 0) == (how != "crash"), r.stderr[-3000:]
    assert len(_history(root / "teacher2")) == 3  # the teacher's loop runs the same way
    one, two = _history(root / "one"), _history(root / "two")
    assert len(one) == len(two) == 6 and len(_history(root / "cut")) == 2  # rank 0 wrote epochs 1-2, then died
    best_one, best_two = max(h["val"] for h in one), max(h["val"] for h in two)
    assert abs(best_one - best_two) <= 0.05, (best_one, best_two)
    assert best_two > 0.3  # it learns: chance is 25/101
    r = _run(root, data, "cut", "resume", teacher, 2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [h["val"] for h in _history(root / "cut")] == [h["val"] for h in two]
    a = torch.load(root / "two" / "state.pt", weights_only=True, map_location="cpu")["model"]
    b = torch.load(root / "cut" / "state.pt", weights_only=True, map_location="cpu")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ridge_refuses_torchrun(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deccm.runs import RunError
    from deccm.train import configs_from_dict

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    mcfg, _, variant = configs_from_dict({"variant": "ridge"})
    with pytest.raises(RunError, match="run it without torchrun"):
        train("student", tiny_dataset, tmp_path / "r", mcfg, TrainConfig(device="cpu"), variant=variant)
