"""deccm_retrain: extract new media → prepare data → teacher → student → evaluate → gate → register.

Thin on purpose: every task calls one function of :mod:`deccm.pipeline` (plain, tested,
idempotent: a retried or rerun task repeats no finished work) and passes its JSON result on.
``deccm.pipeline`` (torch, MLflow) is imported inside the tasks, so parsing this file stays fast; only the
settings schema (``deccm.settings``: the metric table and names, no torch) is read while parsing.

Runs weekly (Monday 03:00 UTC) and whenever the asset ``deccm-media`` gets an event (a data
drop). An event's ``extra`` carries data locations only (:data:`DATA_KEYS`, e.g. ``{"source":
"media", "videos": "/data/clips", ...}``); any other key, and queued events that disagree, fail
the run (:func:`run_settings`). Scheduled and asset-triggered runs take their source from the
event or the deployment (``DECCM_SOURCE``), never from a default. Manual runs take the params
below (``airflow dags test deccm_retrain -c '{"source": "synth-tiny"}'``, ``make pipeline``, the
UI's trigger form or ``POST /api/v2/dags/deccm_retrain/dagRuns``). ``register`` publishes the
asset ``deccm-champion`` with the champion's version. Every task is idempotent, so every task
retries with exponential backoff and has an ``execution_timeout``. dags/README.md has the details.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from deccm.settings import ENV_SOURCE, Pipeline, SettingsError, airflow_params, spec

DAG_ID = "deccm_retrain"
MEDIA = Asset("deccm-media")  # a data drop: POST /api/v2/assets/events {"asset_id": …, "extra": {data locations}}, or a producer task's outlet
CHAMPION = Asset("deccm-champion")  # published by register: extra {"model", "version" (the champion), "registered", "promoted"}
# no start_date: unpausing waits for the next Monday. run_immediately=timedelta(0) says so explicitly: Airflow 3's
# default (False) still runs the past tick when the DAG is unpaused within a tenth of the gap after it (16.8 h of a
# Monday), which started this week's retraining at once when a person unpaused the DAG on Monday morning
WEEKLY = CronTriggerTimetable("0 3 * * 1", timezone="UTC", run_immediately=timedelta(0))

# What a data drop's asset event may carry: where the data is (and which generated source / seed), nothing else.
DATA_KEYS = ("source", "seed", "videos", "tracks", "logs", "tracks_meta", "pgc", "pgc_pairs")
AIRFLOW_KEYS = frozenset({"from_rest_api"})  # what Airflow itself adds to an event's extra
BY_HAND = ("manual", "operator_triggered")  # run types whose conf a person (or a DAG) chose: the params hold the source
DEFAULT_RETRY = {"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": 2.0,
                 "max_retry_delay": timedelta(minutes=30), "execution_timeout": timedelta(hours=1)}
# The run's settings, declared once in deccm.settings.Pipeline (defaults, help, choices, bounds): the trigger form and
# every conf are checked by the same rules the pipeline's CLI and make_config apply.
PARAMS: dict[str, Param] = airflow_params(Pipeline)


def _check(key: str, value: Any, where: str) -> Any:
    """``value`` converted when setting ``key`` accepts it, else a SettingsError naming the key, the value and the rule."""
    try:
        return spec(Pipeline, key).convert(value)
    except SettingsError as e:
        raise SettingsError(f"{where} {e}") from None


def deployment_source() -> str | None:
    """The source the deployment runs on schedule (``$DECCM_SOURCE``), or None when it sets none."""
    return os.environ.get(ENV_SOURCE) or None


def event_data(asset_events: Mapping[Any, Sequence[Any]] | None) -> dict[str, Any]:
    """The one data drop the queued asset events name: their ``extra`` less Airflow's own keys.

    Why (docs/architecture.md, "DAG"): an event carries data locations only, so a gate setting or
    an epoch count can never arrive past the params' checks; and one run takes one drop, so queued
    events that disagree fail the run instead of mixing drop A's videos with drop B's logs.
    """
    drops: list[dict[str, Any]] = []
    for events in (asset_events or {}).values():
        for event in events:
            extra = {k: v for k, v in (event.extra or {}).items() if k not in AIRFLOW_KEYS}
            foreign = sorted(set(extra) - set(DATA_KEYS))
            if foreign:
                raise SettingsError(f"a deccm-media asset event carries {foreign}: an event carries data locations only "
                                    f"({', '.join(DATA_KEYS)}). Fix: drop those keys from the event; settings come from "
                                    "the DAG's params (a manual run's conf) or the deployment's config")
            for k, v in extra.items():
                _check(k, v, "the deccm-media event's")
            if extra not in drops:
                drops.append(extra)
    if len(drops) > 1:
        raise SettingsError(f"{len(drops)} queued deccm-media events name different data ({drops}); one run takes one "
                            "data drop. Fix: post the drops one at a time, each after the previous run finished")
    return drops[0] if drops else {}


def run_settings(params: Mapping[str, Any], asset_events: Mapping[Any, Sequence[Any]] | None, run_type: str = "manual",
                 scheduled_source: str | None = None) -> dict[str, Any]:
    """The run's settings: the params, with the data drop's locations (:func:`event_data`) over them.

    A run nobody started by hand (weekly, or a data drop without ``source``) takes its source from
    ``scheduled_source`` (the deployment's config); without one it fails instead of quietly
    training on the generated demo corpus.
    """
    settings = dict(params)
    data = event_data(asset_events)
    settings.update(data)
    if run_type not in BY_HAND and "source" not in data:
        if not scheduled_source:
            raise SettingsError(f"a {run_type} run has no source: neither the data drop's event nor the deployment names "
                                f"one. Fix: set {ENV_SOURCE} (e.g. media) in the deployment (docker/compose.yaml, "
                                "docker/.env), or put \"source\" in the deccm-media event")
        settings["source"] = _check("source", scheduled_source, f"the deployment's {ENV_SOURCE}:")
    return settings


@dag(
    dag_id=DAG_ID,
    schedule=AssetOrTimeSchedule(timetable=WEEKLY, assets=MEDIA),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=24),  # the two 6 h trainings, their retries and the rest; a hung run frees the slot
    params=PARAMS,
    tags=["deccm"],
    doc_md=__doc__,
    default_args={"owner": "deccm", **DEFAULT_RETRY},  # every task is idempotent: retrying repeats no finished work
)
def deccm_retrain() -> None:
    @task
    def config() -> dict[str, Any]:
        from deccm import pipeline

        ctx = get_current_context()
        run_type = str(getattr(ctx["dag_run"].run_type, "value", ctx["dag_run"].run_type))
        try:
            return pipeline.make_config(run_settings(ctx["params"], ctx.get("triggering_asset_events"), run_type,
                                                     deployment_source()))
        except ValueError as e:  # refused settings: a retry would be refused the same way
            raise AirflowFailException(str(e)) from e

    @task
    def plan_shards(cfg: dict[str, Any]) -> list[dict[str, Any]]:
        from deccm import pipeline

        return pipeline.plan_shards(cfg)

    @task(retries=3, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0, max_retry_delay=timedelta(minutes=10),
          execution_timeout=timedelta(hours=2))
    def extract(cfg: dict[str, Any], shard: dict[str, Any]) -> str:
        from deccm import pipeline

        return pipeline.extract_shard(cfg, shard)

    @task(trigger_rule="none_failed")  # generated sources have no shards: extract is skipped, not failed
    def prepare_data(cfg: dict[str, Any], stores: Any) -> str:
        from deccm import pipeline

        return pipeline.prepare_data(cfg, [stores[i] for i in range(len(stores))])  # indexing reads exactly len() XComs

    @task(execution_timeout=timedelta(hours=6))
    def train_teacher(cfg: dict[str, Any], data: str) -> str | None:
        from deccm import pipeline
        from deccm.train import TrainingError

        try:
            return pipeline.train_teacher(cfg, data)
        except TrainingError as e:  # diverged: the same seed and data would diverge again on a retry
            raise AirflowFailException(str(e)) from e

    @task(execution_timeout=timedelta(hours=6))
    def train_student(cfg: dict[str, Any], data: str, teacher: str | None) -> str:
        from deccm import pipeline
        from deccm.train import TrainingError

        try:
            return pipeline.train_student(cfg, data, teacher)
        except TrainingError as e:  # as in train_teacher
            raise AirflowFailException(str(e)) from e

    @task
    def evaluate(cfg: dict[str, Any], run: str) -> dict[str, Any]:
        from deccm import pipeline

        return pipeline.evaluate_candidates(cfg, run)

    @task
    def gate(cfg: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
        from deccm import pipeline

        return pipeline.gate(cfg, evaluation)

    @task(outlets=[CHAMPION])
    def register(cfg: dict[str, Any], run: str, decision: dict[str, Any]) -> dict[str, Any]:
        from deccm import pipeline

        result = pipeline.register(cfg, run, decision)
        # serving follows the alias by polling; this event lets other DAGs follow the champion too
        get_current_context()["outlet_events"][CHAMPION].extra = {
            "model": "deccm-student", "version": result["champion"], "registered": result["version"],
            "promoted": result["promoted"]}
        return result

    cfg = config()
    stores = extract.partial(cfg=cfg).expand(shard=plan_shards(cfg))
    data = prepare_data(cfg, stores)
    run = train_student(cfg, data, train_teacher(cfg, data))
    register(cfg, run, gate(cfg, evaluate(cfg, run)))


deccm_retrain()
