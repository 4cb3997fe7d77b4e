"""The run contract: crash-consistent epochs, idempotent stages, paths from any cwd, refusals."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deccm.models import ModelConfig
from deccm.runs import BEST, CONFIG, STATE, RunError, TrainConfig, load_for_inference, read_config
from deccm.train import configs_from_dict, train

FAST = TrainConfig(epochs=3, batch_size=64, seed=7, device="cpu")
TIMING = ("seconds", "rows_per_s")

# Runs training in a child process that SIGKILLs itself at the N-th file replacement of the
# run (before or after the rename), i.e. at any point between or inside the per-epoch writes.
KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    n, when, data, out, overwrite = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
    seed = int(sys.argv[6])
    real, calls = os.replace, [0]
    def replace(src, dst):
        calls[0] += 1
        if calls[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        if calls[0] == n and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    import torch
    torch.set_num_threads(1)
    from deccm.models import ModelConfig
    from deccm.runs import TrainConfig
    from deccm.train import train
    train("student", data, out, ModelConfig.for_mode("fixed", distill="off"),
          TrainConfig(epochs=3, batch_size=64, seed=seed, device="cpu"), variant="no-distill", overwrite=overwrite)
""")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> None:
    """Bit-identical comparisons across processes need the same reduction order: one thread everywhere."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")[key]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in read_config(run).history]


def _kill_at(tmp: Path, data: Path, out: Path, n: int, when: str, overwrite: bool = False, seed: int = 7) -> int:
    driver = tmp / "driver.py"
    driver.write_text(KILL_DRIVER)
    r = subprocess.run([sys.executable, str(driver), str(n), when, str(data), str(out), "1" if overwrite else "0", str(seed)],
                       capture_output=True, text=True)
    return r.returncode


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every killed-and-resumed run must end up equal to."""
    return train("student", tiny_dataset, tmp_path_factory.mktemp("ref") / "run", ModelConfig.for_mode("fixed", distill="off"),
                 FAST, variant="no-distill")


@pytest.mark.slow
@pytest.mark.parametrize("n,when", [(1, "before"), (1, "after"), (2, "after"), (4, "before"), (6, "after")])
def test_sigkill_at_any_write_then_resume_equals_uninterrupted(tiny_dataset: Path, reference: Path, tmp_path: Path,
                                                               n: int, when: str) -> None:
    out = tmp_path / "run"
    rc = _kill_at(tmp_path, tiny_dataset, out, n, when)
    assert rc == -9, f"the child was meant to die by SIGKILL at replace #{n} ({when}), exit {rc}"
    train("student", tiny_dataset, out, ModelConfig.for_mode("fixed", distill="off"), FAST, variant="no-distill", resume="auto")
    assert _same_weights(_weights(out / STATE), _weights(reference / STATE))
    assert _same_weights(_weights(out / BEST), _weights(reference / BEST))
    assert _history(out) == _history(reference)
    assert read_config(out).finished and read_config(out).best_epoch == read_config(reference).best_epoch
    assert json.loads((out / CONFIG).read_text()) == {**torch.load(out / STATE, weights_only=True)["run"]}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.mark.slow
def test_overwrite_keeps_old_run_until_the_new_one_has_an_epoch(tiny_dataset: Path, reference: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _kill_at(tmp_path, tiny_dataset, out, 1, "after", overwrite=True, seed=8) == -9  # mid first epoch of the new run
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(RunError, match="other settings"):  # not silently resumed into the old run
        train("student", tiny_dataset, out, ModelConfig.for_mode("fixed", distill="off"),
              TrainConfig(epochs=3, batch_size=64, seed=8, device="cpu"), variant="no-distill", resume="auto")
    train("student", tiny_dataset, out, ModelConfig.for_mode("fixed", distill="off"),
          TrainConfig(epochs=3, batch_size=64, seed=8, device="cpu"), variant="no-distill", overwrite=True)
    assert read_config(out).train.seed == 8 and read_config(out).finished
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")], "staging dirs left behind"


def test_auto_resume_is_idempotent_and_continues_partial_runs(tiny_dataset: Path, reference: Path, tmp_path: Path) -> None:
    stamp = (reference / STATE).stat().st_mtime_ns
    assert train("student", tiny_dataset, reference, ModelConfig.for_mode("fixed", distill="off"), FAST,
                 variant="no-distill", resume="auto") == reference.resolve()
    assert (reference / STATE).stat().st_mtime_ns == stamp  # finished: returned as is, nothing rewritten

    entries: list[dict] = []

    def stop_after_first(entry: dict) -> None:
        entries.append(entry)
        if entry["epoch"] == 0:
            raise KeyboardInterrupt

    out = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        train("student", tiny_dataset, out, ModelConfig.for_mode("fixed", distill="off"), FAST, variant="no-distill",
              on_epoch_end=stop_after_first)
    assert not read_config(out).finished
    assert {"epoch", "val", "loss", "match", "rows_per_s", "seconds", "best"} <= set(entries[0])
    train("student", tiny_dataset, out, ModelConfig.for_mode("fixed", distill="off"), FAST, variant="no-distill",
          resume="auto", on_epoch_end=entries.append)
    assert [e["epoch"] for e in entries] == [0, 1, 2]
    assert _same_weights(_weights(out / STATE), _weights(reference / STATE))


def test_default_names_and_teacher_lookup_live_in_the_library(tiny_dataset: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    t = train("teacher", tiny_dataset, train_cfg=TrainConfig(epochs=1, batch_size=64, seed=5, device="cpu"))
    assert t == (tmp_path / "home/runs/teacher-fixed-s5").resolve()
    s = train("student", tiny_dataset, train_cfg=TrainConfig(epochs=1, batch_size=64, seed=5, device="cpu"))
    conf = read_config(s)
    assert s.name == "student-blend-fixed-s5" and conf.teacher["name"] == "teacher-fixed-s5"  # the recommended student
    assert conf.variant == "blend" and conf.model.erase_residual and conf.model.ridge_blend == 1 and conf.model.confounder == "none"
    with pytest.raises(RunError, match="none is trained for mode faithful"):
        train("student", tiny_dataset, model_cfg=ModelConfig.for_mode("faithful"),
              train_cfg=TrainConfig(epochs=1, batch_size=64, seed=5, device="cpu"))
    assert read_config(train("student", tiny_dataset, tmp_path / "own", ModelConfig.for_mode("fixed", distill="off"),
                             TrainConfig(epochs=1, batch_size=64, seed=5, device="cpu"))).variant == "custom"


def test_configs_from_a_plain_dict() -> None:
    mcfg, tcfg, variant = configs_from_dict({"mode": "faithful", "variant": "no-deconf", "train": {"epochs": "4", "lr": 0.01},
                                             "model": {"latent_dim": 32}})
    assert (mcfg.mode, mcfg.confounder, mcfg.latent_dim, variant) == ("faithful", "none", 32, "no-deconf")
    assert (tcfg.epochs, tcfg.lr) == (4, 0.01)
    with pytest.raises(RunError, match="unknown training settings \\['epoch'\\]"):
        configs_from_dict({"train": {"epoch": 3}})
    with pytest.raises(RunError, match="variant 'best' is unknown"):
        configs_from_dict({"variant": "best"})
    assert configs_from_dict({})[2] == "blend" and configs_from_dict({"mode": "faithful"})[2] == "deccm"


@pytest.mark.slow
def test_a_mistyped_run_dir_names_itself(tmp_path: Path) -> None:
    wrong = tmp_path / "runs" / "studnet"
    (tmp_path / "runs").mkdir()
    with pytest.raises(RunError, match=f"{wrong}: no such run directory"):
        read_config(wrong)
    r = subprocess.run([sys.executable, "-m", "deccm.evaluate", str(wrong)], capture_output=True, text=True)
    assert r.returncode == 2 and f"{wrong}: no such run directory" in r.stderr and "Traceback" not in r.stderr


def test_truncated_checkpoint_is_a_clear_error(reference: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / BEST).write_bytes((run / BEST).read_bytes()[:100])
    with pytest.raises(RunError, match="cannot be read as a deccm checkpoint"):
        load_for_inference(run)


def test_library_code_leaves_the_hosts_log_handlers_alone(tiny_dataset: Path, reference: Path, tmp_path: Path) -> None:
    from deccm.evaluate import evaluate
    from deccm.serve import Recommender

    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        before = (list(root.handlers), root.level)
        train("teacher", tiny_dataset, tmp_path / "t", ModelConfig.for_mode("fixed"), TrainConfig(epochs=1, batch_size=64, device="cpu"))
        evaluate([str(reference)], n_boot=0)
        Recommender.from_run(reference, device="cpu")
        assert (list(root.handlers), root.level) == before
    finally:
        root.removeHandler(handler)


@pytest.mark.slow
def test_readme_commands_work_from_any_directory(tmp_path: Path) -> None:
    """README's train/evaluate commands with a relative DECCM_HOME, then evaluated from another cwd."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir()
    elsewhere.mkdir()
    env = {**os.environ, "DECCM_HOME": ".deccm"}

    def run(cmd: list[str], cwd: Path, **extra: str) -> str:
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, env={**env, **extra}, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stderr[-2000:]}"
        return r.stdout

    run(["deccm.cli", "data", "synth", "--preset", "tiny"], proj)
    common = ["--data", ".deccm/data/synth-tiny", "--epochs", "2", "--batch-size", "64"]
    run(["deccm.train", "teacher", *common], proj)
    run(["deccm.train", "student", *common], proj)  # the recommended student
    run(["deccm.train", "student", "--variant", "deccm", *common], proj)
    runs = proj / ".deccm/runs"
    conf = read_config(runs / "student-blend-fixed-s1234")
    assert Path(conf.data["path"]).is_absolute() and Path(conf.teacher["path"]).is_absolute()
    out = run(["deccm.evaluate", str(runs / "student-blend-fixed-s1234"), "--compare", str(runs / "student-deccm-fixed-s1234"),
               "popularity", "--bootstrap", "20"], elsewhere, DECCM_HOME=str(proj / ".deccm"))
    assert "student-deccm-fixed-s1234:test_oracle" in out and "popularity:test" in out
