"""MLflow tracking: where runs are logged, and what a training or evaluation logs.

Tracking is SQLite under the state dir by default (``$DECCM_HOME/mlflow/mlflow.db``, artifacts
in ``$DECCM_HOME/mlflow/artifacts``); any ``MLFLOW_TRACKING_URI`` wins. A training run is one
MLflow run, found again by its run dir and settings (tags ``deccm.run_dir``, ``deccm.settings``),
so a resumed training continues the same MLflow run and an evaluation lands on the run it
evaluates. Params say what the model is and what it was trained on, honestly: provenance
(synthetic / demo corpus / user data), extractor specs (pretrained or untrained), the data
manifest hash and the code version.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from deccm import config
from deccm.runs import RunConfig, read_config

log = logging.getLogger(__name__)

EXPERIMENT = "deccm"
TAG_RUN_DIR = "deccm.run_dir"
TAG_SETTINGS = "deccm.settings"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else SQLite under ``$DECCM_HOME/mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{config.state_path('mlflow', 'mlflow.db')}"


def artifact_root() -> str:
    return config.state_path("mlflow", "artifacts", "x").parent.as_uri()


def setup() -> str:
    """Point MLflow at the tracking store and make sure the ``deccm`` experiment exists; returns its id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves this machine
    import mlflow

    user = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri())
    if user is None:  # MLflow also exports the URI; keep a later DECCM_HOME (and child processes) free to choose their own
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_root())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def provenance(conf: RunConfig) -> str:
    """What the model was trained on, in words a person reads: synthetic, demo corpus, user data or imported."""
    if conf.synthetic:
        return "synthetic"
    name = str(conf.data.get("name") or "")
    if name.startswith("demo-corpus"):
        return "demo corpus (generated media)"
    if name.startswith("recorded-corpus"):
        return "recorded corpus (real recordings, generated clips and picks)"
    if conf.data.get("provenance") == "imported-legacy":
        return "imported (authors' layout)"
    return "user data"


def data_kind(conf: RunConfig) -> str:
    """What the training data is, as a field the card, the demo and the health check switch on: ``synthetic``
    (feature vectors), ``generated`` (the demo corpus: rendered music, drawn clips), ``recorded`` (real recordings,
    drawn clips and simulated picks) or ``real`` (the user's media, imported data)."""
    name = str(conf.data.get("name") or "")
    return ("synthetic" if conf.synthetic else "generated" if name.startswith("demo-corpus")
            else "recorded" if name.startswith("recorded-corpus") else "real")


def extractor_summary(conf: RunConfig) -> dict[str, str]:
    """``{"video": "efficientnet-lite0 (pretrained)", "music": "vggish+... (UNTRAINED)"}`` or 'none (synthetic features)'."""
    feats = conf.data.get("features") or {}
    out = {}
    for kind in ("video", "music"):
        spec = feats.get(kind)
        out[kind] = "none (synthetic features)" if spec is None else \
            f"{spec.get('name')} ({'pretrained' if spec.get('trained') else 'UNTRAINED weights'}, spec {spec.get('spec_id')})"
    return out


def metric_key(name: str) -> str:
    """An MLflow-safe metric or tag name (MLflow refuses '@'): ``HR_w@10`` → ``HR_w_at_10``."""
    return name.replace("@", "_at_")


def settings_id(conf: RunConfig) -> str:
    return hashlib.sha256(json.dumps(conf.settings(), sort_keys=True).encode()).hexdigest()[:16]


def run_params(conf: RunConfig) -> dict[str, Any]:
    """Flat params for MLflow: what the model is, what it saw, which code made it."""
    ext = extractor_summary(conf)
    params: dict[str, Any] = {
        "kind": conf.kind, "variant": conf.variant, "mode": conf.mode,
        "data.name": conf.data.get("name"), "data.manifest_hash": conf.data.get("manifest_hash"),
        "data.provenance": provenance(conf), "data.synthetic": conf.synthetic,
        "data.confounder_available": (conf.data.get("confounder") or {}).get("available", conf.synthetic or None),
        "extractor.video": ext["video"], "extractor.music": ext["music"],
        "teacher": (conf.teacher or {}).get("name"), "code_version": conf.code_version,
    }
    params.update({f"model.{k}": v for k, v in conf.model.to_dict().items()})
    params.update({f"train.{k}": v for k, v in conf.train.__dict__.items()})
    return params


def find_run(run_dir: str | Path, conf: RunConfig | None = None) -> str | None:
    """The MLflow run id of a run dir (with the same settings, when ``conf`` is given), or None."""
    import mlflow

    setup()
    path = str(Path(run_dir).resolve())
    query = f"tags.`{TAG_RUN_DIR}` = '{path}'"
    if conf is not None:
        query += f" and tags.`{TAG_SETTINGS}` = '{settings_id(conf)}'"
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=query, order_by=["start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


class TrainingTracker:
    """Logs one training run to MLflow live: pass :meth:`on_epoch` as ``train(..., on_epoch_end=...)``.

    The MLflow run starts at the first finished epoch (the run dir's config then exists and
    says everything about the run) and is found again when the training resumes.
    """

    def __init__(self, run_dir: str | Path, strict: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.run_id: str | None = None
        self.strict = strict  # False: a tracking failure is logged once and tracking stops; training goes on
        self.broken = False

    def _guard(self, fn: Any, *args: Any) -> Any:
        if self.broken:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - tracking must not kill a training run unless asked to
            if self.strict:
                raise
            self.broken = True
            log.warning("MLflow tracking of %s stopped (%s: %s); training goes on", self.run_dir, type(e).__name__, e)
            return None

    def _open(self) -> str:
        import mlflow

        if self.run_id is None:
            conf = read_config(self.run_dir)
            self.run_id = find_run(self.run_dir, conf)
            if self.run_id is None:
                tags = {TAG_RUN_DIR: str(self.run_dir), TAG_SETTINGS: settings_id(conf), "deccm.kind": conf.kind,
                        "deccm.provenance": provenance(conf), "deccm.synthetic": str(conf.synthetic).lower()}
                run = mlflow.MlflowClient().create_run(setup(), run_name=conf.name, tags=tags)
                self.run_id = run.info.run_id
                mlflow.MlflowClient().log_batch(self.run_id, params=_params(run_params(conf)))
                log.info("tracking %s in MLflow run %s (%s)", self.run_dir, self.run_id, tracking_uri())
        return self.run_id

    def on_epoch(self, entry: dict[str, Any]) -> None:
        """Log one epoch's losses, validation score and speed at step = epoch."""
        self._guard(self._log_epoch, entry)

    def finish(self) -> str | None:
        """Log the outcome (best epoch and score) and the run's config and best weights; returns the MLflow run id."""
        return self._guard(self._finish)

    def _log_epoch(self, entry: dict[str, Any]) -> None:
        import mlflow

        run_id = self._open()
        metrics = {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and k not in ("epoch", "best")}
        mlflow.MlflowClient().log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, _now(), int(entry["epoch"]))
                                                         for k, v in metrics.items()])

    def _finish(self) -> str:
        import mlflow

        run_id = self._open()
        conf = read_config(self.run_dir)
        client = mlflow.MlflowClient()
        client.log_batch(run_id, metrics=[mlflow.entities.Metric("best_val", float(conf.best_val), _now(), int(conf.best_epoch))],
                         tags=[mlflow.entities.RunTag("deccm.finished", str(conf.finished).lower())])
        for name in ("config.json", "best.pt"):
            client.log_artifact(run_id, str(self.run_dir / name), artifact_path="run")
        if conf.finished:
            client.set_terminated(run_id, "FINISHED")
        return run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log named figures (names made MLflow-safe) to a run."""
    import mlflow

    mlflow.MlflowClient().log_batch(run_id, metrics=[mlflow.entities.Metric(metric_key(k), float(v), _now(), step)
                                                     for k, v in metrics.items()])


def log_evaluation(run_id: str, by_split: dict[str, dict[str, float]]) -> None:
    """A run's evaluation figures as MLflow metrics ``eval.<split>.<metric>``: the one place that names them
    (``deccm.evaluate`` and the pipeline's evaluation both log through it)."""
    log_metrics(run_id, {f"eval.{split}.{name}": value for split, values in by_split.items() for name, value in values.items()})


def log_decision(run_id: str, decision: dict[str, Any]) -> None:
    """The gate's decision on the challenger's run: a tag, its reasons, and the whole record as JSON."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_tag(run_id, "deccm.gate", "promote" if decision["promote"] else "rejected")
    client.set_tag(run_id, "deccm.gate.reasons", "; ".join(decision["reasons"])[:5000])
    client.log_dict(run_id, {k: v for k, v in decision.items() if k != "evaluation"}, "gate_decision.json")


def _params(d: dict[str, Any]) -> list:
    import mlflow

    return [mlflow.entities.Param(k, str(v)[:6000]) for k, v in d.items()]


def _now() -> int:
    import time

    return int(time.time() * 1000)
