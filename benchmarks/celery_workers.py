"""deccm_retrain on Airflow's CeleryExecutor: the mapped extraction tasks spread over two Celery workers.

Starts everything on this machine and stops it at the end: a PostgreSQL cluster (Airflow's
metadata DB and Celery's result backend), Redis (the broker), Airflow's api-server, scheduler
and dag-processor, and two workers (`airflow celery worker --concurrency 1`, hostnames w1 and
w2); then triggers one run on generated media (`source=media`, 4 shards per media kind) and
prints every task instance and how many tasks each worker executed. The compose file's
`--profile celery` runs the same services in containers (docker/README.md).

Needs Debian's `postgresql` and `redis-server`, and the `deploy` extra (Airflow's Celery provider).
Usage: python benchmarks/celery_workers.py [--shards 4]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from media import make_user_media  # noqa: E402  (the test suite's generated clips, tracks and logs)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--shards", type=int, default=4)
args = ap.parse_args()

root = Path(tempfile.mkdtemp(prefix="deccm-celery-", dir="/tmp"))  # the postgres user must reach it
if os.geteuid() == 0:
    shutil.chown(root, "postgres", "postgres")
pg = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
BIN = Path(sys.executable).parent


def as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


PGP, REDIS, API, LOGS1, LOGS2, LOGS0 = free_ports(6)
procs = []


def start(name: str, cmd: list[str], env: dict[str, str]) -> None:
    log = open(root / f"{name}.log", "wb")
    procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root))
try:
    subprocess.run(as_pg([str(pg / "initdb"), "-D", str(root / "pg"), "-U", "deccm", "--auth=trust"]), check=True, capture_output=True)
    subprocess.run(as_pg([str(pg / "pg_ctl"), "-D", str(root / "pg"), "-o", f"-p {PGP} -k {root} -c listen_addresses=127.0.0.1",
                          "-l", str(root / "pg.log"), "-w", "start"]), check=True, capture_output=True)
    subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(PGP), "-U", "deccm", "airflow"], check=True)
    db = f"postgresql+psycopg2://deccm@127.0.0.1:{PGP}/airflow"
    start("redis", ["redis-server", "--port", str(REDIS), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], dict(os.environ))
    media = root / "media"; media.mkdir(); make_user_media(media)
    env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "DECCM_HOME": str(root / "deccm"), "PATH": f"{BIN}:{os.environ['PATH']}",
           "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
           "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{REDIS}/0", "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://deccm@127.0.0.1:{PGP}/airflow",
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(API),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{API}/execution/",
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(LOGS0), "AIRFLOW__CORE__PARALLELISM": "4"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    start("api", [str(BIN / "airflow"), "api-server", "--port", str(API)], env)
    start("scheduler", [str(BIN / "airflow"), "scheduler"], env)
    start("dagproc", [str(BIN / "airflow"), "dag-processor"], env)
    for w, port in (("w1", LOGS1), ("w2", LOGS2)):
        start(w, [str(BIN / "airflow"), "celery", "worker", "--concurrency", "1", "--celery-hostname", f"{w}@%h"],
              {**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port)})
    eng = sqlalchemy.create_engine(db)
    for _ in range(180):
        with eng.connect() as c:
            n = c.execute(sqlalchemy.text("SELECT count(*) FROM dag WHERE dag_id='deccm_retrain'")).scalar()
        if n: break
        time.sleep(1)
    conf = {"source": "media", "videos": str(media / "clips"), "tracks": str(media / "tracks"), "logs": str(media / "pairs.csv"),
            "tracks_meta": str(media / "tracks.csv"), "shards": args.shards, "epochs": 4, "batch_size": 32, "gate_floor": 0.0, "device": "cpu"}
    subprocess.run([str(BIN / "airflow"), "dags", "unpause", "deccm_retrain"], env=env, check=True, capture_output=True)
    t0 = time.time()
    subprocess.run([str(BIN / "airflow"), "dags", "trigger", "deccm_retrain", "-c", json.dumps(conf)], env=env, check=True, capture_output=True)
    state = None
    for _ in range(900):
        with eng.connect() as c:
            state = c.execute(sqlalchemy.text("SELECT state FROM dag_run WHERE dag_id='deccm_retrain' AND run_type='manual'")).scalar()
        if state in ("success", "failed"): break
        time.sleep(1)
    print("dag run:", state, f"{time.time() - t0:.0f} s")
    with eng.connect() as c:
        rows = c.execute(sqlalchemy.text("SELECT task_id, map_index, state, hostname, queued_by_job_id, start_date, end_date FROM task_instance "
                                         "WHERE dag_id='deccm_retrain' ORDER BY start_date")).all()
    for r in rows:
        print(r.task_id, r.map_index, r.state, r.hostname, f"{(r.end_date - r.start_date).total_seconds():.1f}s" if r.end_date and r.start_date else "")
    for w in ("w1", "w2"):
        txt = (root / f"{w}.log").read_text(errors="replace")
        print(w, "executed", txt.count("succeeded in"), "tasks")
finally:
    for p in procs:
        try: os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError: pass
    time.sleep(5)
    for p in procs:
        try: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
    subprocess.run(as_pg([str(pg / "pg_ctl"), "-D", str(root / "pg"), "-m", "fast", "-w", "stop"]), capture_output=True)
    print("logs in", root)
