"""The MLflow server's users and the deccm resources they share; run once per `up` by the mlflow-init service.

Runs as the MLflow admin (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) and
is idempotent, so every start also applies rotated passwords from docker/.env:

- the pipeline user (MLFLOW_PIPELINE_USERNAME / _PASSWORD, Airflow's tasks): MANAGE on the `deccm`
  experiment and the `deccm-student` model; not an admin, so it cannot touch users or grants.
- the demo user (MLFLOW_DEMO_USERNAME / _PASSWORD): READ on both; it can load the champion but cannot
  register a version or move an alias (the server's default_permission is READ as well).

The experiment and the model are created here, by the admin, because MLflow gives a resource's creator
MANAGE on it: created first by the demo user, `deccm-student` would be the demo's to re-point. The
experiment keeps its artifacts on the server (`mlflow-artifacts:/`, the mlflow-artifacts volume), where
the grants guard them: deccm.tracking.setup() would put them in DECCM_HOME, which the demo mounts
read-only, and MLflow writes a file into a local model's folder when it loads one. Nothing secret is printed.

    tests/test_stack.py runs this file against a real server (python docker/mlflow-init.py).
"""
from __future__ import annotations

import os
import sys

MIN_PASSWORD = 12  # mlflow.utils.validation._validate_password


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"mlflow-init: {name} is not set")
    return value


def ensure_user(auth, username: str, password_var: str) -> None:  # noqa: ANN001 - mlflow.server.auth.client.AuthServiceClient
    from mlflow.exceptions import MlflowException

    password = _env(password_var)
    if len(password) < MIN_PASSWORD:
        sys.exit(f"mlflow-init: {password_var} is shorter than {MIN_PASSWORD} characters (MLflow refuses it)")
    try:
        user = auth.get_user(username)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(username, password)
        print(f"mlflow-init: created user {username}")
        return
    auth.update_user_password(username, password)  # the admin sets it: no current password needed
    if user.is_admin:
        auth.update_user_admin(username, False)
    print(f"mlflow-init: user {username} exists; password set from {password_var}")


def grant(auth, username: str, resource_type: str, resource_id: str, permission: str) -> None:  # noqa: ANN001
    """Exactly ``permission``: a grant that exists at another level is replaced."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, permission)


def main() -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from deccm import registry, tracking

    uri = _env("MLFLOW_TRACKING_URI")
    admin = _env("MLFLOW_TRACKING_USERNAME")
    _env("MLFLOW_TRACKING_PASSWORD")  # the admin's: MLflow's clients read both from the environment
    auth = AuthServiceClient(uri)
    pipeline, demo = _env("MLFLOW_PIPELINE_USERNAME"), _env("MLFLOW_DEMO_USERNAME")
    if len({pipeline, demo, admin}) != 3:
        sys.exit("mlflow-init: the admin, pipeline and demo users must be three different users")
    ensure_user(auth, pipeline, "MLFLOW_PIPELINE_PASSWORD")
    ensure_user(auth, demo, "MLFLOW_DEMO_PASSWORD")

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(tracking.EXPERIMENT)  # the server's artifact root: served
        print(f"mlflow-init: created the experiment {tracking.EXPERIMENT}")
    else:
        experiment_id = experiment.experiment_id
        if not experiment.artifact_location.startswith("mlflow-artifacts:"):
            print(f"mlflow-init: WARNING: the experiment {tracking.EXPERIMENT} keeps its artifacts at "
                  f"{experiment.artifact_location}, not on the server: the read-only demo cannot load models "
                  "from there. Fix (docker/README.md): rename it in MLflow's UI, start the stack again, "
                  "retrain.", file=sys.stderr)
    try:
        client.get_registered_model(registry.MODEL_NAME)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(registry.MODEL_NAME)
        print(f"mlflow-init: created the registered model {registry.MODEL_NAME}")
    for user, permission in ((pipeline, "MANAGE"), (demo, "READ")):
        grant(auth, user, "experiment", experiment_id, permission)
        grant(auth, user, "registered_model", registry.MODEL_NAME, permission)
        print(f"mlflow-init: {user}: {permission} on experiment {tracking.EXPERIMENT} ({experiment_id}) "
              f"and model {registry.MODEL_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
