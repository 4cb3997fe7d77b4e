"""The deccm_retrain DAG under real Airflow 3.3 (SQLite in a temp AIRFLOW_HOME) and a temp DECCM_HOME.

Airflow reads AIRFLOW_HOME once, at its first import, so the module fixture sets the same
variables as the Makefile's AIRFLOW_ENV before importing it. Runs go through ``dag.test()``
in this process (tasks run in-process; their log records reach caplog), the failing run
through ``airflow dags test`` (the command ``make pipeline`` uses: its exit status counts),
and one test drives a real ``airflow standalone`` through the REST API.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DAG_ID = "deccm_retrain"
MODEL = "deccm-student"
BIN = Path(sys.executable).parent  # the venv's bin: Airflow starts `airflow` subprocesses by name

TASKS = {"config", "plan_shards", "extract", "prepare_data", "train_teacher", "train_student", "evaluate", "gate", "register"}
EDGES = {
    ("config", "plan_shards"), ("config", "extract"), ("plan_shards", "extract"),
    ("config", "prepare_data"), ("extract", "prepare_data"),
    ("config", "train_teacher"), ("prepare_data", "train_teacher"),
    ("config", "train_student"), ("prepare_data", "train_student"), ("train_teacher", "train_student"),
    ("config", "evaluate"), ("train_student", "evaluate"),
    ("config", "gate"), ("evaluate", "gate"),
    ("config", "register"), ("train_student", "register"), ("gate", "register"),
}
# Measured on synth-tiny (seed 0) with the distilled student (no-deconf): GOOD reaches val HR_w@10 ~0.23
# (floor 0.15), WORSE ~0.03; FAILING's learning rate makes the distillation loss NaN in the student's first
# epoch. The default variant (erased) reaches 0.13 with GOOD's settings on these 400 rows, under the floor; it
# runs end to end in the standalone test below and in tests/test_stack.py (floor 0).
GOOD = {"source": "synth-tiny", "epochs": 8, "teacher_epochs": 1, "lr": 1e-2, "variant": "no-deconf"}
WORSE = {"source": "synth-tiny", "epochs": 1, "teacher_epochs": 1, "lr": 1e-5, "variant": "no-deconf"}
FAILING = {"source": "synth-tiny", "epochs": 3, "teacher_epochs": 1, "lr": 1e30}


def airflow_env(airflow_home: Path, deccm_home: Path) -> dict[str, str]:
    """What the Makefile's AIRFLOW_ENV sets, plus the state dir."""
    return {"AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "DECCM_HOME": str(deccm_home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def subprocess_env(extra: dict[str, str]) -> dict[str, str]:
    """os.environ + extra, less the MLflow URIs: mlflow.set_tracking_uri/set_registry_uri export them to os.environ,
    which would point a child at this process's store instead of its own $DECCM_HOME/mlflow."""
    env = {**os.environ, **extra}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(k, None)
    return env


def tracking_uri(deccm_home: Path) -> str:
    return f"sqlite:///{deccm_home / 'mlflow' / 'mlflow.db'}"  # the documented default: $DECCM_HOME/mlflow


def client(deccm_home: Path) -> Any:
    import mlflow

    uri = tracking_uri(deccm_home)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry_state(deccm_home: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({version: its MLflow run id}, {alias: version}) of deccm-student; empty when it is not registered."""
    from mlflow.exceptions import MlflowException

    c = client(deccm_home)
    try:
        aliases = {a: str(v) for a, v in c.get_registered_model(MODEL).aliases.items()}
    except MlflowException:
        return {}, {}
    return {str(mv.version): mv.run_id for mv in c.search_model_versions(f"name = '{MODEL}'")}, aliases


@dataclass
class Airflow:
    home: Path
    deccm_home: Path
    env: dict[str, str]


@dataclass
class Run:
    state: str
    tasks: dict[tuple[str, int], str]  # (task id, map index) → state
    xcom: Callable[[str], Any]


@pytest.fixture(scope="module")
def af(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("airflow")
    deccm_home = tmp_path_factory.mktemp("deccm_home_dag")
    env = airflow_env(home, deccm_home)
    root = logging.getLogger()
    root_before = (list(root.handlers), root.level)  # importing airflow replaces the root handlers (stdout, INFO)
    mlflow_before = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            import airflow.configuration

            if Path(airflow.configuration.AIRFLOW_HOME) != home:
                pytest.fail(f"airflow was imported before this module set AIRFLOW_HOME (it uses "
                            f"{airflow.configuration.AIRFLOW_HOME}); import airflow only inside tests/test_dag.py fixtures")
            from airflow.utils import db

            db.initdb()
            yield Airflow(home, deccm_home, env)
    finally:
        root.handlers[:] = root_before[0]  # later modules get the logging pytest set up, not Airflow's
        root.setLevel(root_before[1])
        # mlflow.set_tracking_uri (deccm.tracking.setup calls it) exports MLFLOW_TRACKING_URI to os.environ, where it
        # would outlive this module and outrank later modules' DECCM_HOME: put MLflow and the environment back.
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(mlflow_before["MLFLOW_TRACKING_URI"])  # None unsets the variable too
        for k, v in mlflow_before.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def load_dag() -> Any:
    """A freshly parsed DAG: dag.test() merges its run_conf into the DAG object's params, so never reuse one."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


def run_dag(conf: dict[str, Any]) -> Run:
    dr = load_dag().test(run_conf=conf)
    tis = dr.get_task_instances()
    by_id = {ti.task_id: ti for ti in tis if ti.map_index == -1}
    return Run(state=str(dr.state), tasks={(ti.task_id, ti.map_index): str(ti.state) for ti in tis},
               xcom=lambda task_id: by_id[task_id].xcom_pull(task_ids=task_id))


@pytest.fixture(scope="module")
def champion(af: Airflow) -> Run:
    """One full run that trains, passes the gate and becomes the first champion."""
    run = run_dag(GOOD)
    assert run.state == "success", run.tasks
    return run


# --------------------------------------------------------------------------- structure


def test_dag_parses_with_the_designed_tasks_params_and_schedule(af: Airflow) -> None:
    from airflow.sdk import AssetOrTimeSchedule
    from airflow.sdk.exceptions import ParamValidationError

    from deccm import pipeline

    dag = load_dag()
    assert set(dag.task_ids) == TASKS
    assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == EDGES
    dag.check_cycle()

    # params: made from deccm.settings.Pipeline; the trigger form refuses what the pipeline refuses, and accepts what it takes
    assert all(dag.params.get_param(k).description for k in ("source", "seed", "epochs", "variant", "mode", "gate_margin", "videos"))
    assert pipeline.make_config(dag.params.dump())["source"] == "demo"
    assert pipeline.make_config(dag.params.dump())["variant"] == pipeline.TRAINING["demo"]["variant"]
    for key, bad in (("source", "nope"), ("epochs", 0), ("mode", "fast"), ("gate_margin", "x"), ("videos", 3), ("variant", "best"),
                     ("gate_margin", -0.01), ("gate_floor", -0.1), ("gate_floor", 1.5), ("gate_split", "test"),
                     ("gate_split", "test_oracle"), ("gate_metric", "MedR"), ("gate_metric", "genre_KL@10"),
                     ("bias_tolerance", -1), ("window_hop_s", 0), ("batch_size", 1), ("balance_blocks", "maybe")):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(key).resolve(bad)
        with pytest.raises(ValueError, match=key):
            pipeline.make_config({key: bad})
    for key, good in (("gate_margin", 0), ("gate_floor", 0), ("gate_floor", 1), ("gate_split", "val"), ("gate_metric", "NDCG_w@10"),
                      ("variant", None), ("epochs", 3), ("window_hop_s", 2), ("balance_blocks", True)):
        assert dag.params.get_param(key).resolve(good) == good
        assert pipeline.make_config({"source": "synth-tiny", key: good})[key] in (good, pipeline.TRAINING["default"].get(key))

    # weekly OR the deccm-media asset; one run at a time, no backfill of missed weeks
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert (dag.timetable.timetable.expression, str(dag.timetable.timetable.timezone)) == ("0 3 * * 1", "UTC")
    assert dag.timetable.asset_condition.name == "deccm-media"
    assert dag.catchup is False and dag.max_active_runs == 1

    extract = dag.get_task("extract")
    assert extract.is_mapped and extract.retries == 3 and extract.retry_exponential_backoff > 1  # True would be 1.0: constant
    # every task is idempotent, so every task retries with a growing delay, and none runs for ever
    for t in dag.tasks:
        assert t.retries >= 1 and t.retry_exponential_backoff > 1 and t.max_retry_delay is not None, t.task_id
        assert t.execution_timeout is not None and t.execution_timeout.total_seconds() > 0, t.task_id
    assert dag.get_task("train_student").execution_timeout.total_seconds() == 6 * 3600
    assert dag.dagrun_timeout is not None and dag.dagrun_timeout >= 2 * dag.get_task("train_student").execution_timeout
    assert [a.name for a in dag.get_task("register").outlets] == ["deccm-champion"]
    assert dag.get_task("prepare_data").trigger_rule == "none_failed"  # runs when extract is skipped (no shards)


def test_parsing_the_dag_imports_only_the_settings_schema_of_deccm(af: Airflow) -> None:
    code = ("import json, sys, time; t = time.perf_counter()\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
            "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dag_ids),\n"
            "  'heavy': sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'scipy', 'av'}),\n"
            "  'deccm': sorted(m for m in sys.modules if m.startswith('deccm'))}))")
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(af.env), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"errors": {}, "dags": [DAG_ID], "heavy": [],
                   "deccm": ["deccm", "deccm.metrics", "deccm.settings", "deccm.variants"]}


def _dag_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deccm_retrain_dag", DAGS / "deccm_retrain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_data_drop_asset_event_carries_data_locations_only(af: Airflow) -> None:
    from types import SimpleNamespace

    mod = _dag_module()
    params = {"source": "demo", "epochs": 50, "videos": None, "gate_margin": 0.005}
    drop = SimpleNamespace(extra={"source": "media", "videos": "/data/clips", "from_rest_api": True})  # Airflow adds from_rest_api
    want = {"source": "media", "epochs": 50, "videos": "/data/clips", "gate_margin": 0.005}
    assert mod.run_settings(params, {mod.MEDIA: [drop]}) == want
    assert mod.run_settings(params, {mod.MEDIA: [drop, drop]}) == want  # the same drop queued twice is one drop
    assert mod.run_settings(params, {mod.MEDIA: [SimpleNamespace(extra=None)]}) == params
    assert mod.run_settings(params, None) == params  # manual runs: the params as given

    # settings that are not data locations never ride in on an event, however harmless they look
    for extra in ({"gate_margin": -1.0}, {"gate_split": "test"}, {"gate_floor": 0}, {"epochs": 1}, {"videos": "/v", "lr": 1e-3}):
        with pytest.raises(mod.SettingsError, match=r"carries \[.*\]: an event carries data locations only.*Fix: drop"):
            mod.run_settings(params, {mod.MEDIA: [SimpleNamespace(extra=extra)]})
    with pytest.raises(mod.SettingsError, match=r"event's videos=3 is refused"):
        mod.run_settings(params, {mod.MEDIA: [SimpleNamespace(extra={"videos": 3})]})
    # two drops queued behind a running run: refused whole, never merged key by key
    other = SimpleNamespace(extra={"source": "media", "logs": "/data/b/pairs.csv"})
    with pytest.raises(mod.SettingsError, match="2 queued deccm-media events name different data.*one run takes one data drop"):
        mod.run_settings(params, {mod.MEDIA: [drop, other]})


def test_a_run_nobody_started_by_hand_needs_a_source_from_the_drop_or_the_deployment(af: Airflow,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    mod = _dag_module()
    params = {"source": "demo", "seed": 0}
    for run_type in ("scheduled", "asset_triggered"):
        with pytest.raises(mod.SettingsError, match=f"a {run_type} run has no source.*Fix: set DECCM_SOURCE"):
            mod.run_settings(params, None, run_type, None)  # never the demo corpus by default
    assert mod.run_settings(params, None, "scheduled", "media")["source"] == "media"
    drop = {mod.MEDIA: [SimpleNamespace(extra={"source": "synth-tiny", "seed": 3})]}
    assert mod.run_settings(params, drop, "asset_triggered", None) == {"source": "synth-tiny", "seed": 3}
    with pytest.raises(mod.SettingsError, match="DECCM_SOURCE: source='nope' is refused"):
        mod.run_settings(params, None, "scheduled", "nope")
    assert mod.run_settings(params, None, "manual", None) == params
    monkeypatch.setenv("DECCM_SOURCE", "media")
    assert mod.deployment_source() == "media"
    monkeypatch.setenv("DECCM_SOURCE", "")
    assert mod.deployment_source() is None


# --------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_a_run_registers_a_champion_that_ranks_like_its_checkpoint(af: Airflow, champion: Run, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    from deccm.data import load_dataset
    from deccm.serve import Recommender

    assert champion.tasks[("extract", -1)] == "skipped"  # a generated source has no media to extract
    assert all(s == "success" for (t, _), s in champion.tasks.items() if t != "extract"), champion.tasks
    result = champion.xcom("register")
    run_dir = champion.xcom("train_student")
    assert result["promoted"] is True and result["champion"] == result["version"]
    versions, aliases = registry_state(af.deccm_home)
    assert set(versions) == {result["version"]} and aliases == {"champion": result["version"], "challenger": result["version"]}
    c = client(af.deccm_home)
    assert c.get_run(versions[result["version"]]).data.tags["deccm.run_dir"] == run_dir  # the model came from this training run

    ds = load_dataset(champion.xcom("prepare_data"))
    x = np.asarray(ds.ugc.video_features[np.asarray(ds.ugc.val.video[:8])], dtype=np.float32)
    mlflow.set_tracking_uri(tracking_uri(af.deccm_home))  # the registry follows it (no registry URI of its own is set)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion", dst_path=str(tmp_path))  # not a stray temp dir
    got = model.predict(pd.DataFrame({"features": [row.tolist() for row in x]}), params={"k": 10})
    ids, scores = Recommender.from_run(run_dir, device="cpu", extractor=False).rank_features(x, 10)
    assert [list(r) for r in got["track_ids"]] == ids.tolist()
    np.testing.assert_allclose(np.array([list(r) for r in got["scores"]]), scores, rtol=1e-5, atol=1e-6)

    # register published the asset deccm-champion with the champion's version
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(
            AssetModel.name == "deccm-champion").all()
        extras = [e.extra for e in events]
    assert {"model": MODEL, "version": result["version"], "registered": result["version"], "promoted": True} in extras


@pytest.mark.slow
def test_a_worse_challenger_is_registered_but_not_promoted(af: Airflow, champion: Run, caplog: pytest.LogCaptureFixture,
                                                          tmp_path: Path) -> None:
    versions_before, aliases_before = registry_state(af.deccm_home)
    caplog.set_level(logging.INFO)
    run = run_dag(WORSE)
    log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("deccm"))  # what the gate task logged
    assert run.state == "success", run.tasks

    decision, result = run.xcom("gate"), run.xcom("register")
    assert decision["promote"] is False and result["promoted"] is False
    versions, aliases = registry_state(af.deccm_home)
    assert set(versions) == set(versions_before) | {result["version"]} and result["version"] not in versions_before
    assert aliases == {"champion": aliases_before["champion"], "challenger": result["version"]}

    # the decision is in the task log and on the challenger's MLflow run (tag + the whole record)
    assert "gate: KEEP the champion" in log
    assert any(r in log for r in decision["reasons"] if "does not beat the champion" in r)
    c = client(af.deccm_home)
    mlflow_run = c.get_run(versions[result["version"]])
    assert mlflow_run.data.tags["deccm.gate"] == "rejected"
    assert "does not beat the champion" in mlflow_run.data.tags["deccm.gate.reasons"]
    recorded = json.loads(Path(c.download_artifacts(mlflow_run.info.run_id, "gate_decision.json", str(tmp_path))).read_text())
    assert recorded["promote"] is False and recorded["reasons"] == decision["reasons"]
    assert c.get_model_version(MODEL, result["version"]).tags["deccm.gate"] == "rejected"


@pytest.mark.slow
def test_a_failing_training_task_fails_the_run_and_leaves_the_registry_alone(af: Airflow, champion: Run) -> None:
    from airflow.models import DagRun

    before = registry_state(af.deccm_home)
    known = {dr.run_id for dr in DagRun.find(dag_id=DAG_ID)}
    out = subprocess.run([str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(FAILING)],
                         env=subprocess_env(af.env), capture_output=True, text=True, timeout=300)
    output = out.stdout + out.stderr
    assert out.returncode == 1, output[-3000:]
    assert "loss became nan" in output and "Fix: lower --lr" in output

    (dr,) = [dr for dr in DagRun.find(dag_id=DAG_ID) if dr.run_id not in known]
    states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
    assert str(dr.state) == "failed"
    assert states["train_student"] == "failed"
    assert {states[t] for t in ("evaluate", "gate", "register")} == {"upstream_failed"}
    assert registry_state(af.deccm_home) == before


# --------------------------------------------------------------------------- the real thing: airflow standalone


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"airflow standalone exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; standalone log:\n{log.read_text()[-4000:]}")


def task_logs(home: Path, run_id: str) -> str:
    runs = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    return "\n".join(f"== {p.relative_to(runs)}\n{p.read_text()[-3000:]}" for p in sorted(runs.rglob("*.log")))


@pytest.mark.slow
def test_airflow_standalone_runs_the_dag_triggered_through_the_rest_api(tmp_path: Path) -> None:
    home, deccm_home = tmp_path / "airflow", tmp_path / "deccm"
    api, worker_logs, trigger_logs = free_ports(3)
    env = subprocess_env({**airflow_env(home, deccm_home),
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(api),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api}/execution/",  # workers report here
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_logs),  # both default to fixed ports on all interfaces
           "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_logs),
           "AIRFLOW__CORE__PARALLELISM": "2"})
    base = f"http://127.0.0.1:{api}"
    conf = {"source": "synth-tiny", "epochs": 2, "teacher_epochs": 1, "gate_floor": 0.0}  # tiny: the floor would refuse it
    log = tmp_path / "standalone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)  # its own process group: stopped as one below
    try:
        def healthy() -> bool:
            status, body = http("GET", f"{base}/api/v2/monitor/health")
            return status == 200 and all(body.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler", "dag_processor"))

        wait_for("the API server, scheduler and DAG processor", healthy, 180, proc, log)
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        status, body = http("POST", f"{base}/auth/token", {"username": "admin", "password": password})
        assert status in (200, 201), body
        token = body["access_token"]
        assert http("GET", f"{base}/api/v2/dags/{DAG_ID}")[0] == 401  # no token, no API

        wait_for(f"{DAG_ID} to be parsed", lambda: http("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)[0] == 200, 120, proc, log)
        unpaused_at = datetime.now(timezone.utc)
        status, body = http("PATCH", f"{base}/api/v2/dags/{DAG_ID}", {"is_paused": False}, token)
        assert status == 200 and body["is_paused"] is False, body
        status, body = http("POST", f"{base}/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}, token)
        assert status == 200, body
        run_id = body["dag_run_id"]
        quoted = urllib.parse.quote(run_id, safe="")

        def finished() -> str | None:
            state = http("GET", f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quoted}", token=token)[1]
            return state["state"] if isinstance(state, dict) and state["state"] in ("success", "failed") else None

        state = wait_for(f"run {run_id}", finished, 420, proc, log)
        assert state == "success", task_logs(home, run_id)
        runs = http("GET", f"{base}/api/v2/dags/{DAG_ID}/dagRuns", token=token)[1]["dag_runs"]
        assert [r["run_type"] for r in runs if r["run_type"] != "scheduled"] == ["manual"]
        # unpausing started no scheduled run: a scheduled run here is only the weekly tick (Monday 03:00 UTC) coming due
        # while this test ran, never a tick from before the unpause
        early = [r for r in runs if r["run_type"] == "scheduled"
                 and datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00")) < unpaused_at]
        assert early == [], early

        versions, aliases = registry_state(deccm_home)
        assert "champion" in aliases and aliases["champion"] in versions
        status, tis = http("GET", f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances", token=token)
        assert {t["task_id"]: t["state"] for t in tis["task_instances"]}["register"] == "success"
        gate_log = home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=gate" / "attempt=1.log"
        assert "gate: PROMOTE" in gate_log.read_text()
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group, wait for all of it (the API server outlives the leader by seconds), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
