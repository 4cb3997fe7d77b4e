"""Fault tests (issue 20): each a real process on real stores, and afterwards nothing is lost or promoted wrongly.

The cases and their outcomes are the "Faults survived" table in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deccm import locks, pipeline, registry, tracking
from deccm.models import ModelConfig
from deccm.runs import TrainConfig, read_config
from deccm.train import train


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DECCM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(pipeline.ENV_SOURCE, raising=False)
    monkeypatch.delenv(locks.ENV_TIMEOUT, raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def _student(data: Path, out: Path, seed: int) -> Path:
    tr = tracking.TrainingTracker(out, strict=True)
    run = train("student", data, out, ModelConfig.for_mode("fixed", distill="off"),
                TrainConfig(epochs=1, batch_size=64, seed=seed, device="cpu"), variant="no-distill", on_epoch_end=tr.on_epoch)
    tr.finish()
    return run


def _python(code: str, *args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def _versions() -> list[str]:
    return [v["version"] for v in registry.list_versions()]


# --------------------------------------------------------------------------- kill -9 inside registration


KILLED_AFTER = """
    import os, signal, sys
    import mlflow
    from deccm import registry
    where = sys.argv[2]
    real = mlflow.MlflowClient.create_model_version

    def create(self, name, source, run_id=None, tags=None, **kw):
        if where == "untagged":  # an older, two-step registration: the version first, its tags later
            real(self, name, source, run_id=run_id, **kw)
        else:
            real(self, name, source, run_id=run_id, tags=tags, **kw)
        os.kill(os.getpid(), signal.SIGKILL)  # dies before the tags (untagged) or before the alias (tagged)

    mlflow.MlflowClient.create_model_version = create
    registry.register(sys.argv[1])
"""


@pytest.mark.slow
def test_kill_9_inside_registration_then_a_rerun_adopts_the_version(home: Path, tiny_dataset: Path) -> None:
    run_a = _student(tiny_dataset, home / "runs" / "a", seed=2)
    p = _python(KILLED_AFTER, str(run_a), "untagged")
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL
    assert _versions() == ["1"] and registry.find_version(run_a) is None  # an orphan: created, not identified
    rerun = _python("import sys; from deccm import registry; print(registry.register(sys.argv[1]))", str(run_a))
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    assert out.split()[-1] == "1" and _versions() == ["1"]  # adopted, not duplicated
    assert registry.find_version(run_a).tags[registry.TAG_RUN_ID] == tracking.find_run(run_a)

    run_b = _student(tiny_dataset, home / "runs" / "b", seed=3)
    p = _python(KILLED_AFTER, str(run_b), "tagged")  # today's one-step creation, killed before the alias moves
    p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL and _versions() == ["2", "1"]
    assert registry.register(run_b) == "2" and _versions() == ["2", "1"]
    assert [v["aliases"] for v in registry.list_versions()] == [["challenger"], []]


# --------------------------------------------------------------------------- the MLflow server stops during the gate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(home: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on the state dir's SQLite database; returns once it answers."""
    import urllib.request

    db = home / "mlflow" / "server.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    log = open(home / f"server-{port}.log", "ab")  # noqa: SIM115 - the server outlives this function
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--default-artifact-root", (home / "mlflow" / "artifacts").as_uri(), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home / f"server-{port}.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    raise AssertionError("mlflow server did not start: " + (home / f"server-{port}.log").read_text()[-3000:])


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker
    proc.wait(timeout=60)


@pytest.mark.slow
def test_mlflow_server_stopped_during_the_gate_fails_the_task_and_keeps_the_champion(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast; Airflow's retries are the retry
    server = _server(home, port)
    try:
        # the rollback test's recipe (below): a weak champion, then a strong challenger the real gate promotes
        monkeypatch.setenv(pipeline.ENV_SOURCE, "synth-tiny")
        common = {"variant": "no-deconf", "teacher_epochs": 1, "device": "cpu"}
        assert pipeline.run_all({**common, "epochs": 1, "lr": 1e-5, "gate_floor": 0.0})["champion"] == "1"
        cfg = pipeline.make_config({**common, "epochs": 8, "lr": 1e-2, "bias_tolerance": 1.0})
        data = pipeline.prepare_data(cfg)
        run_b = pipeline.train_student(cfg, data, pipeline.train_teacher(cfg, data))
        evaluation = pipeline.evaluate_candidates(cfg, run_b)
        decision = pipeline.gate(cfg, evaluation)
        assert evaluation["champion_version"] == "1" and decision["promote"], decision["reasons"]  # the gate wants v2 ...
        _stop(server)
        with pytest.raises(registry.RegistryUnavailable, match=f"http://127.0.0.1:{port} is unavailable"):
            pipeline.register(cfg, run_b, decision)  # ... and the registry is gone: the task fails
        with pytest.raises(registry.RegistryUnavailable):
            pipeline.evaluate_candidates(cfg, run_b)  # an outage is never "no champion"
        server = _server(home, port)
        assert registry.champion_version() == "1" and _versions() == ["1"]  # nothing changed
        result = pipeline.register(cfg, run_b, decision)  # Airflow's retry, with the server back
        assert result["promoted"] and result["champion"] == "2" and _versions() == ["2", "1"]
    finally:
        if server.poll() is None:
            _stop(server)


# --------------------------------------------------------------------------- a rollback, then a scheduled rerun


@pytest.mark.slow
def test_a_rollback_survives_a_scheduled_rerun_on_unchanged_data(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pipeline.ENV_SOURCE, "synth-tiny")  # the deployment's source: scheduled runs name none
    # settings measured in tests/test_dag.py: val HR_w@10 ~0.03 (weak, passes only a floor of 0) and ~0.23 (strong)
    common = {"variant": "no-deconf", "teacher_epochs": 1, "device": "cpu"}
    weak = pipeline.run_all({**common, "epochs": 1, "lr": 1e-5, "gate_floor": 0.0})
    assert weak["promoted"] and weak["champion"] == "1" and "synth-tiny" in weak["data"]
    # the real floor (0.15) and margin (0.005); the weak champion ranks about at random, so its top-genre share
    # (0.14) is far below any trained model's (0.29): the bias guard's tolerance is widened for this case only
    params = {**common, "epochs": 8, "lr": 1e-2, "bias_tolerance": 1.0}
    strong = pipeline.run_all(params)
    assert strong["promoted"] and strong["champion"] == "2", strong["reasons"]
    assert registry.rollback() == "1"  # a person rolls back

    rerun = pipeline.run_all(params)  # the next scheduled run: same data, same settings, same weights
    assert rerun["run"] == strong["run"] and rerun["version"] == "2"
    assert rerun["promote"] and not rerun["promoted"]  # the gate would promote; the registry keeps the rollback
    assert rerun["champion"] == "1" and "not promoted automatically (rolled back" in rerun["held"]
    assert registry.champion_version() == "1" and _versions() == ["2", "1"]

    r = subprocess.run([sys.executable, "-m", "deccm.cli", "registry", "clear", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert pipeline.run_all(params)["champion"] == "2"  # a person lifted it: the gate decides again


# --------------------------------------------------------------------------- two writers on one state dir


HOLDER = """
    import sys
    from deccm import locks
    with locks.hold(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin, or kills this process
"""


def test_a_second_writer_waits_or_fails_with_the_holder_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "state" / ".lock"
    holder = _python(HOLDER, str(lock), stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    info = json.loads(lock.read_text())
    assert info["pid"] == holder.pid
    with pytest.raises(locks.LockHeld, match=f"held by pid {holder.pid} since {info['since']}.*DECCM_LOCK_TIMEOUT"):
        with locks.hold(lock, timeout=0):
            pass
    waiter = _python("import sys; from deccm import locks\nwith locks.hold(sys.argv[1], timeout=600): print('got it')",
                     str(lock), env={"DECCM_LOG": "INFO"})
    holder.stdin.close()  # the holder finishes; the waiter gets the lock
    assert holder.wait(timeout=60) == 0
    out, err = waiter.communicate(timeout=600)
    assert waiter.returncode == 0 and out.strip() == "got it", err
    holder = _python(HOLDER, str(lock), stdin=subprocess.PIPE)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9 while holding: the kernel releases a flock, no stale lock remains
    holder.wait(timeout=60)
    with locks.hold(lock, timeout=0):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


PIPELINE = """
    import json, sys, time
    from pathlib import Path
    from deccm import logsetup, pipeline
    logsetup.setup()
    go = Path(sys.argv[1])
    while not go.exists():  # imported and ready: start together with the other pipeline
        time.sleep(0.05)
    try:
        r = pipeline.run_all({"source": "synth-tiny", "epochs": 3, "batch_size": 64, "variant": "plain",
                              "gate_floor": 0.0, "device": "cpu"})
    except Exception as e:
        print(type(e).__name__, e, file=sys.stderr)
        sys.exit(3)
    print(json.dumps({k: r[k] for k in ("version", "champion", "run")}))
"""


@pytest.mark.slow
def test_two_pipelines_at_once_on_one_state_dir(home: Path) -> None:
    first = _python(PIPELINE, str(home / "go-first"))
    second = _python(PIPELINE, str(home / "go-second"), env={locks.ENV_TIMEOUT: "0"})  # fails at once when it cannot lock
    third = _python(PIPELINE, str(home / "go-third"))  # waits (the default timeout)
    try:
        _two_pipelines(home, first, second, third)
    finally:
        for p in (first, second, third):
            if p.poll() is None:
                p.kill()
                p.wait()


def _two_pipelines(home: Path, first: subprocess.Popen, second: subprocess.Popen, third: subprocess.Popen) -> None:
    lock = home / "pipeline" / locks.LOCK_NAME
    (home / "go-first").touch()
    while f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.05)
    (home / "go-second").touch()  # while the first pipeline holds the state
    (home / "go-third").touch()
    out2, err2 = second.communicate(timeout=600)
    assert second.returncode == 3 and f"LockHeld the pipeline state {home / 'pipeline'} is locked: held by pid {first.pid}" in err2
    out1, err1 = first.communicate(timeout=900)
    assert first.returncode == 0, err1[-3000:]
    done = json.loads(out1.strip().splitlines()[-1])
    assert done["version"] == done["champion"] == "1"
    out3, err3 = third.communicate(timeout=900)  # it waited, then found the work done: the same run and version
    assert third.returncode == 0, err3[-3000:]
    assert f"is locked by pid {first.pid}" in err3 and "waiting up to 600 s" in err3
    assert json.loads(out3.strip().splitlines()[-1]) == done
    assert _versions() == ["1"] and registry.champion_version() == "1"  # nothing duplicated
    assert read_config(done["run"]).finished  # the run dir is whole
