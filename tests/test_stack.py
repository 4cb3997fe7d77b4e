"""The team configuration without Docker: PostgreSQL behind the MLflow server and Airflow's metadata DB.

Starts its own PostgreSQL cluster in a temp dir on localhost (Debian's `postgresql`, which
`make test` installs when missing), an MLflow tracking server on it, runs the DAG with Airflow's
metadata DB on it, checks that a champion is registered on the server, serves a prediction
through the registered MLflow model, and stops everything it started. `make stack-test` runs
this file alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from test_dag import BIN, DAG_ID, airflow_env, free_ports, stop_group, subprocess_env

MODEL = "deccm-student"


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
def test_pipeline_on_postgres_registers_a_champion_on_the_mlflow_server(postgres: str, tmp_path: Path) -> None:
    mlflow_port, = free_ports(1)
    server = f"http://127.0.0.1:{mlflow_port}"
    log = tmp_path / "mlflow.log"
    with log.open("wb") as out:
        server_proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"{postgres}/mlflow",
                                   "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts",
                                   "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
                                  stdout=out, stderr=subprocess.STDOUT, env=subprocess_env({}), start_new_session=True)
    try:
        _wait("the MLflow server", lambda: urllib.request.urlopen(f"{server}/health", timeout=2).status == 200, 180, server_proc, log)
        home, deccm_home = tmp_path / "airflow", tmp_path / "deccm"
        env = subprocess_env({**airflow_env(home, deccm_home),
                              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{postgres}/airflow",
                              "MLFLOW_TRACKING_URI": server})
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

        client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert champion.version == "1" and champion.tags.get("deccm.synthetic") == "true"
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
                "mlflow.set_registry_uri(sys.argv[1]); m = mlflow.pyfunc.load_model('models:/deccm-student@champion'); "
                "f = np.load(sys.argv[2]); out = m.predict(pd.DataFrame({'features': [r.tolist() for r in f]}), params={'k': 5}); "
                "print(json.dumps([list(map(int, t)) for t in out['track_ids']]))")
        r = subprocess.run([sys.executable, "-c", code, server, str(tmp_path / "feats.npy")],
                           env=subprocess_env({"DECCM_HOME": str(tmp_path / "consumer")}), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == rec.rank_features(feats, 5)[0].tolist()
    finally:
        stop_group(server_proc)
