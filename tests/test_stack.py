"""The team configuration without Docker: PostgreSQL behind the MLflow server and Airflow's metadata DB.

Starts its own PostgreSQL cluster in a temp dir on localhost (Debian's `postgresql`, which
`make test` installs when missing), an MLflow tracking server on it with compose's basic auth
(docker/mlflow-auth.ini, the store URI from the environment) and docker/mlflow-init.py's users,
runs the DAG as the pipeline user with Airflow's metadata DB on it, checks as the demo user that
a champion is registered on the server (and that the demo user cannot move it), serves a
prediction through the registered MLflow model, and stops everything it started.
`make stack-test` runs this file alone.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from test_dag import BIN, DAG_ID, airflow_env, free_ports, stop_group, subprocess_env

MODEL = "deccm-student"
DOCKER = Path(__file__).resolve().parents[1] / "docker"
ADMIN, PIPELINE, DEMO = "admin", "deccm-pipeline", "deccm-demo"  # as in docker/compose.yaml


def _as(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed. Fix: make test (or make stack-test) installs Debian's postgresql")
    return found[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as Debian's postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _wait(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")


@pytest.fixture()
def postgres() -> Iterator[str]:
    """A fresh cluster on 127.0.0.1 with databases mlflow and airflow; yields the server URL without a database."""
    pg = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="deccm-pg-", dir="/tmp"))  # the postgres user must reach it: not under root's tmp
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_ports(1)[0]
    subprocess.run(_as_postgres([str(pg / "initdb"), "-D", str(data), "-U", "deccm", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start"]),
                   check=True, capture_output=True, timeout=120)
    try:
        for db in ("mlflow", "airflow"):
            subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "deccm", db], check=True, timeout=60)
        yield f"postgresql+psycopg2://deccm@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_pipeline_on_postgres_registers_a_champion_on_the_mlflow_server(postgres: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow_port, = free_ports(1)
    server = f"http://127.0.0.1:{mlflow_port}"
    log = tmp_path / "mlflow.log"
    pw = {user: secrets.token_urlsafe(18) for user in (ADMIN, PIPELINE, DEMO)}
    ini = tmp_path / "mlflow-auth.ini"  # compose's auth config, its database moved out of the container's path
    ini.write_text(re.sub(r"^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'basic_auth.db'}",
                          (DOCKER / "mlflow-auth.ini").read_text(), count=1, flags=re.M))
    with log.open("wb") as out:  # as compose starts it: basic auth, the store URI (a password in it) in the environment
        server_proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
                                   "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
                                   "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  env=subprocess_env({"MLFLOW_BACKEND_STORE_URI": f"{postgres}/mlflow",
                                                      "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                                                      "MLFLOW_AUTH_ADMIN_PASSWORD": pw[ADMIN],
                                                      "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}))
    try:
        _wait("the MLflow server", lambda: urllib.request.urlopen(f"{server}/health", timeout=2).status == 200, 180, server_proc, log)
        with pytest.raises(urllib.error.HTTPError) as refused:  # /health is open (compose's health check), the API is not
            urllib.request.urlopen(f"{server}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401
        home, deccm_home = tmp_path / "airflow", tmp_path / "deccm"

        # compose's mlflow-init: the users and the resources they share
        init_env = subprocess_env({"DECCM_HOME": str(deccm_home), **_as(ADMIN, pw[ADMIN]),
                                   "MLFLOW_PIPELINE_USERNAME": PIPELINE, "MLFLOW_PIPELINE_PASSWORD": pw[PIPELINE],
                                   "MLFLOW_DEMO_USERNAME": DEMO, "MLFLOW_DEMO_PASSWORD": pw[DEMO]})
        init_env["MLFLOW_TRACKING_URI"] = server
        for _ in range(2):  # idempotent: compose runs it on every `up`
            r = subprocess.run([sys.executable, str(DOCKER / "mlflow-init.py")], env=init_env, capture_output=True,
                               text=True, timeout=300)
            assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
            assert not any(p in r.stdout + r.stderr for p in pw.values()), "mlflow-init printed a password"

        env = subprocess_env({**airflow_env(home, deccm_home),
                              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{postgres}/airflow",
                              "MLFLOW_TRACKING_URI": server, **_as(PIPELINE, pw[PIPELINE])})
        env["MLFLOW_TRACKING_URI"] = server  # subprocess_env drops inherited URIs; this one is the point
        r = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        conf = {"source": "synth-tiny", "epochs": 2, "teacher_epochs": 1, "gate_floor": 0.0}
        r = subprocess.run([str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)], env=env,
                           capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

        # the run is in Airflow's Postgres DB, the model in the MLflow server's registry
        import sqlalchemy

        with sqlalchemy.create_engine(f"{postgres}/airflow").connect() as db:
            states = db.execute(sqlalchemy.text("SELECT state FROM dag_run WHERE dag_id = :d"), {"d": DAG_ID}).scalars().all()
        assert states == ["success"]
        import mlflow
        from mlflow.exceptions import MlflowException

        for k, v in _as(DEMO, pw[DEMO]).items():  # from here on this process is the demo
            monkeypatch.setenv(k, v)
        client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.version == "1" and champion.tags.get("deccm.synthetic") == "true"
        with pytest.raises(MlflowException) as denied:
            client.delete_registered_model_alias(MODEL, "champion")
        assert denied.value.error_code == "PERMISSION_DENIED"
        # the model's files went through the server (mlflow-init's experiment), none into DECCM_HOME, which the demo reads
        assert client.get_experiment_by_name("deccm").artifact_location.startswith("mlflow-artifacts:")
        assert any((tmp_path / "artifacts").rglob("MLmodel")) and not (deccm_home / "mlflow").exists()
        with sqlalchemy.create_engine(f"{postgres}/mlflow").connect() as db:
            assert db.execute(sqlalchemy.text("SELECT count(*) FROM registered_models")).scalar() == 1

        # serve a prediction through the registered model, as a consumer of the registry would, and check it
        # against the champion's own checkpoint
        from deccm.data import load_dataset
        from deccm.serve import Recommender

        rec = Recommender.from_run(champion.tags["deccm.run_dir"], device="cpu", extractor=False)
        feats = load_dataset(rec.run.data_path).ugc.video_features[:3]
        np.save(tmp_path / "feats.npy", feats)
        code = ("import json, sys, mlflow, numpy as np, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
                "mlflow.set_registry_uri(sys.argv[1]); m = mlflow.pyfunc.load_model('models:/deccm-student@champion', dst_path=sys.argv[3]); "
                "f = np.load(sys.argv[2]); out = m.predict(pd.DataFrame({'features': [r.tolist() for r in f]}), params={'k': 5}); "
                "print(json.dumps([list(map(int, t)) for t in out['track_ids']]))")
        (tmp_path / "pyfunc").mkdir()
        r = subprocess.run([sys.executable, "-c", code, server, str(tmp_path / "feats.npy"), str(tmp_path / "pyfunc")],
                           env=subprocess_env({"DECCM_HOME": str(tmp_path / "consumer"), **_as(DEMO, pw[DEMO])}),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == rec.rank_features(feats, 5)[0].tolist()
    finally:
        stop_group(server_proc)
