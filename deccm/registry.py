"""The model registry: the registered student ``deccm-student``, its aliases, the gate, the champion.

- :func:`register` logs a trained student run as an MLflow pyfunc model (``deccm.pyfunc_model``)
  whose artifact is a serving bundle (run config and best weights, catalog vectors and track
  rows, model card), registers it as a new version and gives it the alias ``challenger``.
  Registering the same weights again returns the existing version.
- :func:`decide` is the gate (a pure function): promote a challenger only when its primary
  metric beats the champion's by the margin on the same held-out split, the absolute floors
  hold, and the bias guard holds. :func:`promote` moves ``champion`` and records the
  previous champion on the version (tag ``deccm.previous_champion``); :func:`rollback` moves
  it back.
- :func:`load_champion` returns the champion as a :class:`deccm.serve.Recommender`.

``deccm registry list | promote VERSION | rollback`` is the CLI. Aliases, never stages.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from deccm import io, tracking
from deccm import log as _log
from deccm.card import card_markdown
from deccm.models import ModelConfig
from deccm.runs import BEST, RunError, read_config, run_dir_of
from deccm.serve import Recommender

log = logging.getLogger(__name__)

MODEL_NAME = "deccm-student"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_PREVIOUS = "deccm.previous_champion"
TAG_WEIGHTS = "deccm.best_sha256"
CARD = "card.json"


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says how to fix it."""


def _client() -> Any:
    import mlflow

    tracking.setup()
    return mlflow.MlflowClient()


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateConfig:
    """When a challenger may replace the champion (all on the same held-out split)."""

    metric: str = "HR_w@10"  # primary metric, higher is better
    split: str = "val"
    margin: float = 0.005  # the challenger must beat the champion by more than this
    floor: float = 0.15  # absolute floor of the primary metric (chance is 10/101 = 0.099)
    bias_tolerance: float = 0.05  # genre_KL@10 and top_genre_share@10 may be worse than the champion's by at most this


BIAS_METRICS = ("genre_KL@10", "top_genre_share@10")  # lower is better


def decide(challenger: dict[str, float], champion: dict[str, float] | None, cfg: GateConfig = GateConfig()) -> dict[str, Any]:
    """Promote or not, with every reason and number. ``champion`` None = no comparable champion.

    Without a comparable champion (the first model ever, or one trained on features that
    cannot score this data) only the floors decide.
    """
    reasons: list[str] = []
    ok = True
    value = challenger.get(cfg.metric)
    if value is None or not np.isfinite(value):
        raise ValueError(f"the challenger has no {cfg.metric} on {cfg.split}")
    if value < cfg.floor:
        ok = False
        reasons.append(f"{cfg.metric} {value:.4f} is below the floor {cfg.floor:.4f}")
    else:
        reasons.append(f"{cfg.metric} {value:.4f} clears the floor {cfg.floor:.4f}")
    if champion is None:
        reasons.append("no comparable champion: the floors decide")
    else:
        best = champion[cfg.metric]
        if value > best + cfg.margin:
            reasons.append(f"{cfg.metric} {value:.4f} beats the champion's {best:.4f} by more than {cfg.margin}")
        else:
            ok = False
            reasons.append(f"{cfg.metric} {value:.4f} does not beat the champion's {best:.4f} by more than {cfg.margin}")
        for m in BIAS_METRICS:
            if m in challenger and m in champion:
                if challenger[m] > champion[m] + cfg.bias_tolerance:
                    ok = False
                    reasons.append(f"bias guard: {m} {challenger[m]:.4f} is worse than the champion's {champion[m]:.4f} "
                                   f"by more than {cfg.bias_tolerance}")
                else:
                    reasons.append(f"bias guard: {m} {challenger[m]:.4f} vs champion {champion[m]:.4f} holds")
    return {"promote": ok, "reasons": reasons, "gate": asdict(cfg), "challenger": challenger, "champion": champion}


# --------------------------------------------------------------------------- registering


def model_card(rec: Recommender, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a person needs to judge the model: data and provenance, extractors, figures, confounder handling."""
    conf = rec.run
    confounder = conf.data.get("confounder") or {}
    ext = tracking.extractor_summary(conf)
    return {
        "model": MODEL_NAME, "run": conf.name, "kind": conf.kind, "variant": conf.variant, "mode": conf.mode,
        "trained_on": {
            "dataset": conf.data.get("name"), "manifest_hash": conf.data.get("manifest_hash"),
            "provenance": tracking.provenance(conf), "synthetic": conf.synthetic,
            "note": ("SYNTHETIC features: no media was seen; rankings show the method, not real taste" if conf.synthetic else
                     "the demo corpus is GENERATED: rendered public-domain scores and ffmpeg-drawn clips with a planted relation"
                     if str(conf.data.get("name", "")).startswith("demo-corpus") else "features extracted from the user's media"),
        },
        "extractors": ext,
        "pretrained_extractors": {k: ("pretrained" in v) for k, v in ext.items()},
        "training": {"epochs": conf.train.epochs, "best_epoch": (conf.best_epoch or 0) + 1, "best_val": conf.best_val,
                     "teacher": (conf.teacher or {}).get("name"), "code_version": conf.code_version},
        "confounder": {
            "uploader_taste_in_data": confounder.get("available", conf.synthetic or None),
            "handling": _taste_handling(conf.model),
        },
        "evaluation": evaluation or {},
        "catalog": {"tracks": len(rec.catalog.tracks), "genres": rec.catalog.genres, "genre_mix": rec.catalog.genre_mix()},
    }


def _taste_handling(model: ModelConfig) -> str:
    """What the model does about the uploader's genre taste, in words for the model card."""
    if model.erase_taste:
        return ("erased: the uploader's genre taste is linearly removed from the video vectors (LEACE, fitted on the "
                "training rows' uploader priors), so scores cannot follow it")
    if model.adversary > 0:
        return "adversary: the video encoder is trained against a head that reads the uploader's taste (gradient reversal)"
    return {"none": "not modelled: content-only matching (the uploader's genre taste is left out of scoring)",
            "per-sample": "backdoor adjustment: training conditions on each row's uploader prior; scores average it out",
            "batch-mean": "the authors' batch-mean prior (faithful mode)"}[model.confounder]


def _signature(video_dim: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(Array(DataType.double), "features")])
    outputs = Schema([ColSpec(Array(DataType.long), "track_ids"), ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("k", DataType.long, 10)]))


SERVING_PACKAGES = ("mlflow-skinny", "numpy", "pandas", "scipy", "torch", "tqdm")  # what deccm.pyfunc_model imports, directly or through deccm.serve


def serving_requirements() -> list[str]:
    """The deployable model's pip requirements: the serving imports only (no Airflow, Gradio or media decoding), pinned
    to the versions installed here, which constraints.txt pins (docs/architecture.md, "The deployable model")."""
    return [f"{name}=={dist_version(name)}" for name in SERVING_PACKAGES]


def _code_path() -> str:
    """The ``deccm`` package folder, shipped with the model so it loads where deccm is not installed."""
    return str(Path(__file__).resolve().parent)


def find_version(run_dir: str | Path) -> Any | None:
    """The registered version holding exactly this run's best weights, if any."""
    sha = io.sha256_file(run_dir_of(Path(run_dir)) / BEST)
    for mv in _client().search_model_versions(f"name = '{MODEL_NAME}'"):
        if mv.tags.get(TAG_WEIGHTS) == sha:
            return mv
    return None


def register(run_dir: str | Path, evaluation: dict[str, Any] | None = None) -> str:
    """Register a trained student as a new version of ``deccm-student`` with alias ``challenger``; returns the version.

    The same weights registered before return their version (and it becomes the challenger again).
    """
    import mlflow
    import pandas as pd

    from deccm.data import load_dataset

    run_dir = run_dir_of(Path(run_dir))
    conf = read_config(run_dir)
    if conf.kind != "student":
        raise RegistryError(f"{run_dir}: a {conf.kind} run; only students are registered. Fix: register a student run.")
    client = _client()
    existing = find_version(run_dir)
    if existing is not None:
        client.set_registered_model_alias(MODEL_NAME, CHALLENGER, existing.version)
        log.info("%s is already version %s of %s", run_dir, existing.version, MODEL_NAME)
        return str(existing.version)
    rec = Recommender.from_run(run_dir, device="cpu", extractor=False)
    ds = load_dataset(conf.data_path)
    example = pd.DataFrame({"features": [np.asarray(ds.ugc.video_features[i], dtype=np.float32).tolist()
                                         for i in ds.ugc.val.video[:2]]})
    card = model_card(rec, evaluation)
    run_id = tracking.find_run(run_dir, conf)
    with tempfile.TemporaryDirectory(prefix="deccm-bundle-") as tmp:
        bundle = rec.save_bundle(Path(tmp) / "bundle")
        io.write_json(bundle / CARD, card)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else conf.name,
                              tags=None if run_id else {tracking.TAG_RUN_DIR: str(run_dir)}):
            mlflow.log_dict(card, "model_card.json")
            info = mlflow.pyfunc.log_model(
                name="student", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"bundle": str(bundle)}, signature=_signature(conf.model.video_dim), input_example=example,
                registered_model_name=MODEL_NAME, pip_requirements=serving_requirements(), code_paths=[_code_path()])
            _log_model_metrics(info.model_id, evaluation)
    version = str(info.registered_model_version)
    _describe(client, version, card)
    tags = {TAG_WEIGHTS: io.sha256_file(run_dir / BEST), "deccm.run_dir": str(run_dir), "deccm.run": conf.name,
            "deccm.provenance": tracking.provenance(conf), "deccm.synthetic": str(conf.synthetic).lower(),
            "deccm.variant": conf.variant, "deccm.mode": conf.mode}
    for k, v in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, k, v)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    log.info("registered %s as %s version %s (alias %s)", run_dir, MODEL_NAME, version, CHALLENGER)
    return version


def _log_model_metrics(model_id: str, evaluation: dict[str, Any] | None) -> None:
    """The challenger's key figures as metrics of the logged model (MLflow 3), where `deccm registry list` reads them."""
    import mlflow

    metrics = {tracking.metric_key(name): value for name, value in _key_metrics(evaluation).items()}
    if metrics:
        mlflow.log_metrics(metrics, model_id=model_id)


def _version_metrics(client: Any, mv: Any) -> dict[str, float]:
    """A version's key figures: its logged model's metrics (``split.metric``, '@' written ``_at_``).

    The SQLite registry leaves ``ModelVersion.model_id`` empty; the version's source ``models:/<model id>`` names it.
    """
    model_id = getattr(mv, "model_id", None) or (mv.source.removeprefix("models:/") if str(mv.source).startswith("models:/m-")
                                                  else None)
    return {m.key: m.value for m in client.get_logged_model(model_id).metrics or []} if model_id else {}


def _describe(client: Any, version: str, card: dict[str, Any]) -> None:
    """The model card in words as the version's description, so the MLflow UI shows what the model is."""
    client.update_model_version(MODEL_NAME, version, description=card_markdown({**card, "registry": {"name": MODEL_NAME,
                                                                                                       "version": version}}))


def _key_metrics(evaluation: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, vals in ((evaluation or {}).get("challenger") or {}).items():
        for m in ("HR_w@10", "HR@10", "genre_KL@10", "top_genre_share@10"):
            if isinstance(vals, dict) and m in vals:
                out[f"{split}.{m}"] = float(vals[m])
    return out


# --------------------------------------------------------------------------- aliases


def champion_version() -> str | None:
    """The version the ``champion`` alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None


def promote(version: str, reason: str = "manual") -> None:
    """Point ``champion`` at ``version``, recording the champion it replaces on the version."""
    client = _client()
    try:
        client.get_model_version(MODEL_NAME, str(version))
    except Exception as e:  # noqa: BLE001 - MLflow raises its own types; one clear message
        raise RegistryError(f"{MODEL_NAME} has no version {version}. Fix: `deccm registry list` shows the versions.") from e
    previous = champion_version()
    if previous == str(version):
        return
    client.set_model_version_tag(MODEL_NAME, str(version), TAG_PREVIOUS, previous or "none")
    client.set_model_version_tag(MODEL_NAME, str(version), "deccm.promoted", f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: {reason}")
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    log.info("%s champion: version %s (was %s): %s", MODEL_NAME, version, previous, reason)


def rollback() -> str:
    """Move ``champion`` back to the champion the current one replaced; returns that version."""
    client = _client()
    current = champion_version()
    if current is None:
        raise RegistryError(f"{MODEL_NAME} has no champion to roll back. Fix: train and register one (`make pipeline`).")
    previous = client.get_model_version(MODEL_NAME, current).tags.get(TAG_PREVIOUS)
    if not previous or previous == "none":
        raise RegistryError(f"version {current} replaced no earlier champion; nothing to roll back to.")
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
    client.set_model_version_tag(MODEL_NAME, current, "deccm.rolled_back",
                                 f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: champion back to {previous}")
    log.info("%s champion rolled back from %s to %s", MODEL_NAME, current, previous)
    return previous


def list_versions() -> list[dict[str, Any]]:
    """Every version, newest first, with its aliases and key metrics."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        aliases = client.get_registered_model(MODEL_NAME).aliases or {}
    except MlflowException:
        return []
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda v: -int(v.version)):
        out.append({"version": str(mv.version), "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "run": mv.tags.get("deccm.run", ""),
                    "provenance": mv.tags.get("deccm.provenance", ""),
                    "metrics": {k: f"{v:.4f}" for k, v in _version_metrics(client, mv).items()},
                    "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(mv.creation_timestamp / 1000))})
    return out


def tag_decision(version: str, decision: dict[str, Any]) -> None:
    """Record the gate's verdict and reasons on a version."""
    client = _client()
    client.set_model_version_tag(MODEL_NAME, str(version), "deccm.gate", "promote" if decision["promote"] else "rejected")
    client.set_model_version_tag(MODEL_NAME, str(version), "deccm.gate.reasons", "; ".join(decision["reasons"])[:5000])


def load(ref: str = CHAMPION, device: str = "auto", extractor: bool = True) -> Recommender:
    """A registered version (``ref``: an alias such as ``champion`` / ``challenger`` / ``baseline``, or a version
    number) as a Recommender, its model card and registry version attached as ``rec.card``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version(MODEL_NAME, ref) if str(ref).isdigit() else client.get_model_version_by_alias(MODEL_NAME, ref)
    except MlflowException:
        what = f"{MODEL_NAME} version {ref}" if str(ref).isdigit() else f"{MODEL_NAME}@{ref}"
        raise RegistryError(f"no {what} is registered in "
                            f"{tracking.tracking_uri()}. Fix: train and register one with `make pipeline` "
                            "(or `python -m deccm.pipeline run`).") from None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{mv.version}"))
    bundle = next(local.rglob(CARD), None)
    if bundle is None:
        raise RegistryError(f"{MODEL_NAME} version {mv.version}: no serving bundle in its artifacts. Fix: register the run again.")
    rec = Recommender.from_bundle(bundle.parent, device=device, extractor=extractor)
    aliases = sorted(a for a, v in (client.get_registered_model(MODEL_NAME).aliases or {}).items() if str(v) == str(mv.version))
    rec.card = {**json.loads(bundle.read_text()), "registry": {"name": MODEL_NAME, "version": str(mv.version), "aliases": aliases,
                                                               "previous_champion": mv.tags.get(TAG_PREVIOUS)}}
    return rec


def load_champion(device: str = "auto", extractor: bool = True) -> Recommender:
    """The champion as a Recommender, or a RegistryError that says how to train one."""
    return load(CHAMPION, device=device, extractor=extractor)


# --------------------------------------------------------------------------- CLI


def build_parser(prog: str = "deccm registry") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=f"The {MODEL_NAME} model registry (MLflow; {tracking.EXPERIMENT} experiment).")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="versions with their aliases and key metrics")
    pr = sub.add_parser("promote", help="make VERSION the champion (the previous one is recorded on it)")
    pr.add_argument("version")
    sub.add_parser("rollback", help="move champion back to the champion the current one replaced")
    return p


def main(argv: list[str] | None = None, prog: str = "deccm registry") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    try:
        if args.cmd == "list":
            rows = list_versions()
            if not rows:
                print(f"no versions of {MODEL_NAME} in {tracking.tracking_uri()}")
            for r in rows:
                metrics = "  ".join(f"{k} {v}" for k, v in sorted(r["metrics"].items()))
                print(f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} {r['created']}  {r['run']:<40} {r['provenance']:<30} {metrics}")
        elif args.cmd == "promote":
            promote(args.version, reason="manual promote")
            print(f"{MODEL_NAME}@{CHAMPION} → version {args.version}")
        else:
            print(f"{MODEL_NAME}@{CHAMPION} → version {rollback()}")
    except (RegistryError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.registry"))
