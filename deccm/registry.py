"""The model registry: the registered student ``deccm-student``, its aliases, the gate, the champion.

- :func:`register` logs a trained student run as an MLflow pyfunc model (``deccm.pyfunc_model``)
  whose artifact is a serving bundle (run config and best weights, catalog vectors and track
  rows, model card), registers it as a new version and gives it the alias ``challenger``.
  Registering the same weights again returns the existing version.
- :func:`promote` moves ``champion`` and records the previous champion on the version
  (tag ``deccm.previous_champion``); :func:`rollback` moves it back. Whether a challenger
  deserves promotion is the gate's question (``deccm.gate``).
- :func:`load_champion` returns the champion as a :class:`deccm.serve.Recommender`.

The registry is a small state machine (docs/architecture.md, "The registry's state machine"):

- a version is created with its identity tags (weights sha256, run dir, MLflow run) in one
  call; a rerun finds it by its weights, or adopts an untagged version of the same MLflow
  run (left by a crash) instead of registering a duplicate;
- a rolled-back version, and one the gate rejected, carries ``deccm.no_auto_promote`` and is
  never promoted automatically again until ``deccm registry clear VERSION``; a manual
  ``promote`` still works and says what it overrides;
- automatic promotion is compare-and-swap: :func:`promote` with ``expected_champion`` re-reads
  the alias under the registry lock and aborts (:class:`ChampionMoved`) if it moved;
- an unreachable or locked store raises :class:`RegistryUnavailable`; only MLflow's
  RESOURCE_DOES_NOT_EXIST (no registered model) means "no champion".

``deccm registry list | promote VERSION | rollback | clear VERSION`` is the CLI. Aliases, never stages.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deccm import config, safeio, locks, tracking
from deccm import logsetup as _log
from deccm.card import MODEL_NAME, card_markdown, model_card
from deccm.moments import MomentError, WindowSpec
from deccm.runs import BEST, RunError, read_config, run_dir_of
from deccm.serve import Recommender

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
BASELINE = "baseline"  # the reference model beside the champion (the demo's side by side); registering it never promotes it
TAG_PURPOSE = "deccm.purpose"  # why a version that is no pipeline candidate (e.g. the baseline) is registered
TAG_PREVIOUS = "deccm.previous_champion"
TAG_WEIGHTS = "deccm.best_sha256"
TAG_RUN_ID = "deccm.mlflow_run"
TAG_BLOCK = "deccm.no_auto_promote"  # why this version must not be promoted automatically (rolled back, rejected)
TAG_ABORTED = "deccm.promotion_aborted"
TAG_WINDOW = "deccm.window_spec"  # spec id of the moments' window spec the bundle carries (deccm.moments.WindowSpec)
CARD = "card.json"
UNCHECKED: Any = object()  # promote(expected_champion=UNCHECKED): a person's promote, no compare-and-swap
_MISSING = ("RESOURCE_DOES_NOT_EXIST",)
_REQUEST = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED")
F = TypeVar("F", bound=Callable[..., Any])


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says how to fix it."""


class RegistryUnavailable(RegistryError):
    """The tracking store cannot be reached or is locked: retry later; never read as "no champion"."""


class ChampionMoved(RegistryError):
    """Compare-and-swap failed: the champion is not the one the evaluation saw; nothing was changed."""


def _outage(e: BaseException) -> bool:
    """An error of the store (connection refused, timeout, "database is locked"), not of the request."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.error_code not in _MISSING + _REQUEST
    try:
        import sqlalchemy.exc

        if isinstance(e, sqlalchemy.exc.OperationalError):
            return True
    except ImportError:  # pragma: no cover - MLflow's SQL store needs it
        pass
    import requests

    return isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError))


def _unavailable(e: BaseException) -> RegistryUnavailable:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return RegistryUnavailable(f"the model registry at {tracking.tracking_uri()} is unavailable ({first}). Nothing was "
                               "changed. Fix: start the MLflow server or free the database (MLFLOW_TRACKING_URI names it), "
                               "then retry; the task is safe to run again.")


def _guarded(fn: F) -> F:
    """Turn a store outage inside ``fn`` into :class:`RegistryUnavailable` (an Airflow task then fails and retries)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - classified just below; anything else propagates unchanged
            if _outage(e):
                raise _unavailable(e) from e
            raise

    return wrapper  # type: ignore[return-value]


def _client() -> Any:
    import mlflow

    tracking.setup()
    return mlflow.MlflowClient()


def _aliases_lock() -> Any:
    """Held around every read-check-move of an alias, so two promotes on one state dir cannot interleave."""
    return locks.hold(config.state_path("pipeline", "registry.lock"), what="the registry's aliases")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- registering


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


@_guarded
def find_version(run_dir: str | Path) -> Any | None:
    """The registered version holding exactly this run's best weights, if any."""
    sha = safeio.sha256_file(run_dir_of(Path(run_dir)) / BEST)
    for mv in _client().search_model_versions(f"name = '{MODEL_NAME}'"):
        if mv.tags.get(TAG_WEIGHTS) == sha:
            return mv
    return None


def _orphan(client: Any, run_id: str | None) -> Any | None:
    """An untagged version of this MLflow run: a crash came between its creation and its tags (older deccm)."""
    if run_id is None:
        return None
    for mv in client.search_model_versions(f"name = '{MODEL_NAME}' and run_id = '{run_id}'"):
        if TAG_WEIGHTS not in mv.tags:
            return mv
    return None


def _identity(run_dir: Path, conf: Any, run_id: str | None, purpose: str | None = None) -> dict[str, str]:
    """The tags that say which weights, run dir and MLflow run a version is, and why it is registered when it is no
    pipeline candidate (set when it is created)."""
    tags = {TAG_WEIGHTS: safeio.sha256_file(run_dir / BEST), "deccm.run_dir": str(run_dir), "deccm.run": conf.name,
            "deccm.provenance": tracking.provenance(conf), "deccm.synthetic": str(conf.synthetic).lower(),
            "deccm.variant": conf.variant, "deccm.mode": conf.mode}
    if run_id:
        tags[TAG_RUN_ID] = run_id
    if purpose:
        tags[TAG_PURPOSE] = purpose
    return tags


@_guarded
def register(run_dir: str | Path, evaluation: dict[str, Any] | None = None, alias: str = CHALLENGER,
             purpose: str | None = None, window: WindowSpec | None = None) -> str:
    """Register a trained student as a new version of ``deccm-student`` with alias ``alias``; returns the version.

    ``alias`` is ``challenger`` for the pipeline's candidates; a reference model (``baseline``)
    takes its own alias, so it never becomes the challenger the gate and ``deccm registry list``
    talk about. ``champion`` is refused: only :func:`promote` moves it. ``purpose`` says why a
    version that is no candidate exists; it goes on the version (tag and description), its
    model card and its MLflow run (tag and description). The same weights registered before
    return their version (and it takes ``alias`` again); an untagged version of the same
    MLflow run is adopted, never duplicated. A catalog with audio is registered with its
    moments under ``window`` (default :class:`deccm.moments.WindowSpec`): the bundle holds the
    analyses, the card and the tag ``deccm.window_spec`` the spec, like the extractor spec.
    """
    import mlflow
    import pandas as pd

    from deccm.data import load_dataset

    run_dir = run_dir_of(Path(run_dir))
    conf = read_config(run_dir)
    if conf.kind != "student":
        raise RegistryError(f"{run_dir}: a {conf.kind} run; only students are registered. Fix: register a student run.")
    if alias == CHAMPION:
        raise RegistryError("registering never makes a champion. Fix: register, then `deccm registry promote VERSION`.")
    client = _client()
    existing = find_version(run_dir)
    if existing is not None:
        if purpose:
            client.set_model_version_tag(MODEL_NAME, existing.version, TAG_PURPOSE, purpose)
        client.set_registered_model_alias(MODEL_NAME, alias, existing.version)
        log.info("%s is already version %s of %s", run_dir, existing.version, MODEL_NAME)
        return str(existing.version)
    run_id = tracking.find_run(run_dir, conf)
    orphan = _orphan(client, run_id)
    if orphan is not None:
        for k, v in _identity(run_dir, conf, run_id, purpose).items():
            client.set_model_version_tag(MODEL_NAME, orphan.version, k, v)
        client.set_registered_model_alias(MODEL_NAME, alias, orphan.version)
        log.warning("adopted version %s of %s (created by MLflow run %s, untagged after a crash) for %s",
                    orphan.version, MODEL_NAME, run_id, run_dir)
        return str(orphan.version)
    rec = Recommender.from_run(run_dir, device="cpu", extractor=False)
    ds = load_dataset(conf.data_path)
    example = pd.DataFrame({"features": [np.asarray(ds.ugc.video_features[i], dtype=np.float32).tolist()
                                         for i in ds.ugc.val.video[:2]]})
    if rec.catalog.has_media():
        try:
            rec.catalog.with_moments(window or WindowSpec())
        except MomentError as e:  # registered without moments, and the card says so
            log.warning("%s: no moments (%s)", run_dir, e)
    card = model_card(rec, evaluation)
    if purpose:
        card["purpose"] = {"alias": alias, "why": purpose}
    with tempfile.TemporaryDirectory(prefix="deccm-bundle-") as tmp:
        bundle = rec.save_bundle(Path(tmp) / "bundle")
        safeio.write_json(bundle / CARD, card)
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else conf.name,
                              tags=None if run_id else {tracking.TAG_RUN_DIR: str(run_dir)}):
            mlflow.log_dict(card, "model_card.json")
            if purpose:  # the run's own description in the MLflow UI says what it is for
                mlflow.set_tags({TAG_PURPOSE: purpose, "mlflow.note.content": f"**{MODEL_NAME}@{alias}.** {purpose}"})
            info = mlflow.pyfunc.log_model(
                name="student", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={"bundle": str(bundle)}, signature=_signature(conf.model.video_dim), input_example=example,
                pip_requirements=serving_requirements(), code_paths=[_code_path()])
            _log_model_metrics(info.model_id, evaluation)
    try:
        client.create_registered_model(MODEL_NAME)
    except Exception as e:  # noqa: BLE001 - "already exists" is the usual answer; outages go on to _guarded
        if _outage(e):
            raise
    # the version and its identity in one call: a crash leaves either nothing or a whole, findable version
    mv = client.create_model_version(MODEL_NAME, source=info.model_uri, run_id=info.run_id, model_id=info.model_id,
                                     tags={**_identity(run_dir, conf, info.run_id, purpose), **_window_tags(rec)})
    version = str(mv.version)
    _describe(client, version, card)
    client.set_registered_model_alias(MODEL_NAME, alias, version)
    log.info("registered %s as %s version %s (alias %s)", run_dir, MODEL_NAME, version, alias)
    return version


def _window_tags(rec: Recommender) -> dict[str, str]:
    """``deccm.window_spec``: the spec id of the moments a version's bundle carries (none for a catalog without audio)."""
    m = rec.catalog.moments
    return {TAG_WINDOW: m.spec.spec_id} if m is not None else {}


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
    """The model card in words as the version's description, so the MLflow UI shows what the model is (and, for a
    version that is no pipeline candidate, first why it is there)."""
    purpose = card.get("purpose") or {}
    why = f"**{MODEL_NAME}@{purpose['alias']}.** {purpose['why']}\n\n" if purpose else ""
    client.update_model_version(MODEL_NAME, version, description=why + card_markdown({**card, "registry": {
        "name": MODEL_NAME, "version": version}}))


def _key_metrics(evaluation: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, vals in ((evaluation or {}).get("challenger") or {}).items():
        for m in ("HR_w@10", "HR@10", "genre_KL@10", "top_genre_share@10"):
            if isinstance(vals, dict) and m in vals:
                out[f"{split}.{m}"] = float(vals[m])
    return out


# --------------------------------------------------------------------------- aliases


def champion_version() -> str | None:
    """The version the ``champion`` alias points at; None only when the registry says so.

    A missing registered model (RESOURCE_DOES_NOT_EXIST) or a model without the alias is
    "no champion"; an unreachable or locked store raises :class:`RegistryUnavailable`.
    """
    return alias_version(CHAMPION)


@_guarded
def alias_version(alias: str) -> str | None:
    """The version ``alias`` points at; None only when the registry says there is none (as :func:`champion_version`)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client().get_registered_model(MODEL_NAME)
    except MlflowException as e:
        if e.error_code in _MISSING:
            return None
        raise
    version = (model.aliases or {}).get(alias)
    return None if version is None else str(version)


@_guarded
def blocked(version: str) -> str | None:
    """Why ``version`` must not be promoted automatically (rolled back, rejected by the gate), or None."""
    return _version(_client(), version).tags.get(TAG_BLOCK)


def _version(client: Any, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(MODEL_NAME, str(version))
    except MlflowException as e:
        if e.error_code in _MISSING + _REQUEST:
            raise RegistryError(f"{MODEL_NAME} has no version {version}. Fix: `deccm registry list` shows the versions.") from e
        raise


@_guarded
def promote(version: str, reason: str = "manual", expected_champion: str | None = UNCHECKED) -> list[str]:
    """Point ``champion`` at ``version``, recording the champion it replaces; returns what a manual promote overrides.

    With ``expected_champion`` (the champion the evaluation saw; None = there was none) this
    is compare-and-swap, the automatic path: the alias is re-read under the registry lock and,
    if it moved, nothing changes, the version is tagged why and :class:`ChampionMoved` is
    raised; a version tagged ``deccm.no_auto_promote`` is refused. Without it (a person's
    promote) those tags are overridden, and the overrides are logged and returned.
    """
    client = _client()
    mv = _version(client, version)
    version = str(mv.version)
    automatic = expected_champion is not UNCHECKED
    with _aliases_lock():
        previous = champion_version()
        if previous == version:  # already done (e.g. a task retried after its promote went through)
            return []
        if automatic and previous != (None if expected_champion is None else str(expected_champion)):
            why = (f"{_now()}: not promoted: the champion moved from version {expected_champion} to {previous} since the "
                   "evaluation. Fix: run the pipeline again to evaluate against the current champion.")
            client.set_model_version_tag(MODEL_NAME, version, TAG_ABORTED, why)
            raise ChampionMoved(f"{MODEL_NAME} version {version} {why.split(': ', 1)[1]}")
        overrides = [f"{k}: {mv.tags[k]}" for k in (TAG_BLOCK, "deccm.rolled_back", TAG_ABORTED) if mv.tags.get(k)]
        if automatic and mv.tags.get(TAG_BLOCK):
            raise RegistryError(f"{MODEL_NAME} version {version} is not promoted automatically ({mv.tags[TAG_BLOCK]}). "
                                f"Fix: a person may `deccm registry promote {version}`, or `deccm registry clear {version}`.")
        client.set_model_version_tag(MODEL_NAME, version, TAG_PREVIOUS, previous or "none")
        client.set_model_version_tag(MODEL_NAME, version, "deccm.promoted", f"{_now()}: {reason}")
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    log.info("%s champion: version %s (was %s): %s", MODEL_NAME, version, previous, reason)
    for o in overrides:
        log.warning("manual promote of version %s overrides %s", version, o)
    return overrides


@_guarded
def rollback() -> str:
    """Move ``champion`` back to the champion the current one replaced; returns that version.

    The version rolled back from is tagged ``deccm.no_auto_promote``: a rerun on unchanged
    data returns the same weights, and they must not win the gate again.
    """
    client = _client()
    with _aliases_lock():
        current = champion_version()
        if current is None:
            raise RegistryError(f"{MODEL_NAME} has no champion to roll back. Fix: train and register one (`make pipeline`).")
        previous = client.get_model_version(MODEL_NAME, current).tags.get(TAG_PREVIOUS)
        if not previous or previous == "none":
            raise RegistryError(f"version {current} replaced no earlier champion; nothing to roll back to.")
        client.set_model_version_tag(MODEL_NAME, current, "deccm.rolled_back", f"{_now()}: champion back to {previous}")
        client.set_model_version_tag(MODEL_NAME, current, TAG_BLOCK, f"rolled back {_now()}")
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
    log.info("%s champion rolled back from %s to %s", MODEL_NAME, current, previous)
    return previous


@_guarded
def clear(version: str) -> str | None:
    """Let the gate promote ``version`` again (a person's decision); returns the block it lifted, or None."""
    client = _client()
    reason = _version(client, version).tags.get(TAG_BLOCK)
    if reason:
        client.delete_model_version_tag(MODEL_NAME, str(version), TAG_BLOCK)
        log.info("%s version %s may be promoted automatically again (was: %s)", MODEL_NAME, version, reason)
    return reason


@_guarded
def list_versions() -> list[dict[str, Any]]:
    """Every version, newest first, with its aliases, key metrics and why it is not promoted automatically."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        aliases = client.get_registered_model(MODEL_NAME).aliases or {}
    except MlflowException as e:
        if e.error_code in _MISSING:
            return []
        raise
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda v: -int(v.version)):
        out.append({"version": str(mv.version), "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "run": mv.tags.get("deccm.run", ""),
                    "provenance": mv.tags.get("deccm.provenance", ""),
                    "metrics": {k: f"{v:.4f}" for k, v in _version_metrics(client, mv).items()},
                    "blocked": mv.tags.get(TAG_BLOCK, ""),
                    "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(mv.creation_timestamp / 1000))})
    return out


@_guarded
def tag_decision(version: str, decision: dict[str, Any], held: str | None = None) -> None:
    """Record the gate's verdict and reasons on a version; a rejection also blocks automatic promotion for good.

    Without the block, the same weights (a rerun on unchanged data) could win a later gate
    against a weaker champion, e.g. after a rollback. ``held``: why the registry keeps the
    champion although the gate said promote (verdict ``kept``; not a rejection, no block).
    """
    client = _client()
    verdict = ("kept" if held else "promote") if decision["promote"] else "rejected"
    reasons = [*decision["reasons"], *([f"kept: {held}"] if held else [])]
    client.set_model_version_tag(MODEL_NAME, str(version), "deccm.gate", verdict)
    client.set_model_version_tag(MODEL_NAME, str(version), "deccm.gate.reasons", "; ".join(reasons)[:5000])
    # a rerun on unchanged data meets itself as the champion: that is no rejection of the champion
    if (not decision["promote"] and champion_version() != str(version)
            and not client.get_model_version(MODEL_NAME, str(version)).tags.get(TAG_BLOCK)):
        client.set_model_version_tag(MODEL_NAME, str(version), TAG_BLOCK, f"rejected by the gate {_now()}")


@_guarded
def load(ref: str = CHAMPION, device: str = "auto", extractor: bool = True) -> Recommender:
    """A registered version (``ref``: an alias such as ``champion`` / ``challenger`` / ``baseline``, or a version
    number) as a Recommender, its model card and registry version attached as ``rec.card``."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version(MODEL_NAME, ref) if str(ref).isdigit() else client.get_model_version_by_alias(MODEL_NAME, ref)
    except MlflowException as e:
        if _outage(e):
            raise
        what = f"{MODEL_NAME} version {ref}" if str(ref).isdigit() else f"{MODEL_NAME}@{ref}"
        raise RegistryError(f"no {what} is registered in "
                            f"{tracking.tracking_uri()}. Fix: train and register one with `make pipeline` "
                            "(or `python -m deccm.pipeline run`).") from None
    local = _downloaded(mv)
    bundle = next(local.rglob(CARD), None)
    if bundle is None:
        raise RegistryError(f"{MODEL_NAME} version {mv.version}: no serving bundle in its artifacts. Fix: register the run again.")
    rec = Recommender.from_bundle(bundle.parent, device=device, extractor=extractor)
    aliases = sorted(a for a, v in (client.get_registered_model(MODEL_NAME).aliases or {}).items() if str(v) == str(mv.version))
    rec.card = {**json.loads(bundle.read_text()), "registry": {"name": MODEL_NAME, "version": str(mv.version), "aliases": aliases,
                                                               "previous_champion": mv.tags.get(TAG_PREVIOUS)}}
    return rec


BUNDLE_CACHE_KEEP = 8  # downloaded versions kept under $DECCM_HOME/cache/models (the most recently loaded)


def _downloaded(mv: Any) -> Path:
    """A version's artifacts on local disk, downloaded once: a version's artifacts never change, so the copy under
    ``$DECCM_HOME/cache/models/<source hash>`` is reused by every later evaluation and demo start (and checked there:
    a bundle's audio against its recorded sha256, ``Catalog.load``)."""
    import mlflow

    key = hashlib.sha256(f"{tracking.tracking_uri()}|{mv.source}".encode()).hexdigest()[:16]
    root = config.state_path("cache", "models")
    dest = root / f"{MODEL_NAME}-v{mv.version}-{key}"
    if not (dest / ".complete").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=root))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{mv.version}", dst_path=str(tmp))
            (tmp / ".complete").write_text(f"{mv.source}\n")
            if dest.exists() and not (dest / ".complete").is_file():
                shutil.rmtree(dest, ignore_errors=True)  # an interrupted copy from before
            try:
                os.replace(tmp, dest)
            except OSError:
                pass  # another process finished the same download first: use its copy, never swap one in use
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(dest)  # most recently loaded
    for old in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime, reverse=True)[BUNDLE_CACHE_KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


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
    sub.add_parser("rollback", help="move champion back to the champion the current one replaced (and block it from the gate)")
    cl = sub.add_parser("clear", help="let the gate promote VERSION again (lifts the block a rollback or rejection set)")
    cl.add_argument("version")
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
                flag = f"  [no auto-promote: {r['blocked']}]" if r["blocked"] else ""
                print(f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} {r['created']}  {r['run']:<40} {r['provenance']:<30} "
                      f"{metrics}{flag}")
        elif args.cmd == "promote":
            for o in promote(args.version, reason="manual promote"):
                print(f"overrides {o}")
            print(f"{MODEL_NAME}@{CHAMPION} → version {args.version}")
        elif args.cmd == "clear":
            lifted = clear(args.version)
            print(f"version {args.version}: " + (f"lifted '{lifted}'; the gate may promote it again" if lifted
                                                  else "nothing to clear; the gate may promote it"))
        else:
            print(f"{MODEL_NAME}@{CHAMPION} → version {rollback()}")
    except (RegistryError, RunError, locks.LockHeld) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.registry"))
