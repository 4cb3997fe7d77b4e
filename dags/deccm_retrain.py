"""deccm_retrain: extract new media → prepare data → teacher → student → evaluate → gate → register.

Thin on purpose: every task calls one function of :mod:`deccm.pipeline` (plain, tested,
idempotent: a retried or rerun task repeats no finished work) and passes its JSON result on.
``deccm.pipeline`` (torch, MLflow) is imported inside the tasks, so parsing this file stays fast.

Runs weekly (Monday 03:00 UTC) and whenever the asset ``deccm-media`` gets an event (a data
drop); an event's ``extra`` may carry settings, e.g. ``{"source": "media", "videos": "/data/clips", ...}``.
Manual runs take the params below (``airflow dags test deccm_retrain -c '{"source": "synth-tiny"}'``,
``make pipeline``, the UI's trigger form or ``POST /api/v2/dags/deccm_retrain/dagRuns``).
dags/README.md has the details.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

DAG_ID = "deccm_retrain"
MEDIA = Asset("deccm-media")  # a data drop: POST /api/v2/assets/events {"asset_id": …, "extra": {settings}}, or a producer task's outlet
WEEKLY = CronTriggerTimetable("0 3 * * 1", timezone="UTC")  # no start_date: unpausing waits for the next Monday

_PATH = ["null", "string"]
# The defaults mirror deccm.pipeline.DEFAULTS (tests/test_dag.py checks they agree); None = the pipeline's default.
PARAMS: dict[str, Param] = {
    "source": Param("demo", type="string", enum=["synth-tiny", "synth-small", "synth-tt150k", "demo-tiny", "demo", "media"],
                    description="synth-* = generated synthetic benchmark; demo-tiny / demo = generated real-media demo corpus; "
                                "media = your folders and CSVs below"),
    "seed": Param(0, type="integer", minimum=0, description="data seed of generated sources, split seed of assembled ones"),
    "videos": Param(None, type=_PATH, description="source media: folder of clips"),
    "tracks": Param(None, type=_PATH, description="source media: folder of tracks"),
    "logs": Param(None, type=_PATH, description="source media: usage-log CSV video,track[,uploader]"),
    "tracks_meta": Param(None, type=_PATH, description="source media: track metadata CSV id,title,artist,genre,licence,path"),
    "pgc": Param(None, type=_PATH, description="source media, optional: folder of professionally edited clips (trains a teacher)"),
    "pgc_pairs": Param(None, type=_PATH, description="source media, optional: CSV segment,track for the pgc clips"),
    "epochs": Param(None, type=["null", "integer"], minimum=1,
                    description="student training epochs (and teacher's unless teacher_epochs); empty = the source's (demo 200, else 50)"),
    "teacher_epochs": Param(None, type=["null", "integer"], minimum=1, description="teacher epochs; empty = epochs"),
    "batch_size": Param(None, type=["null", "integer"], minimum=2, description="empty = the source's (demo 128, else 1024)"),
    "lr": Param(None, type=["null", "number"], exclusiveMinimum=0,
                description="learning rate; empty = the source's (demo 1e-3) or the model's default"),
    "train_seed": Param(1234, type="integer", description="training seed"),
    "variant": Param(None, type=["null", "string"], enum=[None, "deccm", "plain", "no-distill", "no-deconf", "ips", "ridge", "adversarial", "erased"],
                     description="student variant (docs/results.md); empty = the source's (demo plain, else erased; deccm in faithful mode); "
                                 "a distilling one falls back to its plain form without PGC data"),
    "balance_blocks": Param(None, type=["null", "boolean"],
                            description="each feature block (CNN frames, motion; embedding, descriptors) gets equal weight "
                                        "at the encoders' input; empty = the source's (demo yes, else no)"),
    "mode": Param("fixed", type="string", enum=["fixed", "faithful"], description="fixed = corrected method, faithful = the authors' code"),
    "gate_metric": Param("HR_w@10", type="string", description="gate: primary metric (higher is better)"),
    "gate_split": Param("gate", type="string", description="gate: held-out split both models are scored on (gate; val for older datasets)"),
    "gate_margin": Param(0.005, type="number", description="gate: the challenger must beat the champion by more than this"),
    "gate_floor": Param(0.15, type="number", description="gate: absolute floor of the primary metric"),
    "bias_tolerance": Param(0.05, type="number", minimum=0, description="gate: how much worse the bias metrics may get"),
    "shards": Param(4, type="integer", minimum=1, description="extraction shards per media kind (parallel mapped tasks)"),
    "device": Param("auto", type="string", enum=["auto", "cpu", "cuda"]),
}


def run_settings(params: Mapping[str, Any], asset_events: Mapping[Any, Sequence[Any]] | None) -> dict[str, Any]:
    """The run's params, overridden by the settings a data drop's asset event carries in ``extra`` (params' keys only)."""
    settings = dict(params)
    for events in (asset_events or {}).values():
        for event in events:
            settings.update({k: v for k, v in (event.extra or {}).items() if k in PARAMS})
    return settings


@dag(
    dag_id=DAG_ID,
    schedule=AssetOrTimeSchedule(timetable=WEEKLY, assets=MEDIA),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["deccm"],
    doc_md=__doc__,
    default_args={"owner": "deccm"},
)
def deccm_retrain() -> None:
    @task
    def config() -> dict[str, Any]:
        from deccm import pipeline

        ctx = get_current_context()
        return pipeline.make_config(run_settings(ctx["params"], ctx.get("triggering_asset_events")))

    @task
    def plan_shards(cfg: dict[str, Any]) -> list[dict[str, Any]]:
        from deccm import pipeline

        return pipeline.plan_shards(cfg)

    @task(retries=3, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0, max_retry_delay=timedelta(minutes=10))
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

        return pipeline.train_teacher(cfg, data)

    @task(execution_timeout=timedelta(hours=6))
    def train_student(cfg: dict[str, Any], data: str, teacher: str | None) -> str:
        from deccm import pipeline

        return pipeline.train_student(cfg, data, teacher)

    @task
    def evaluate(cfg: dict[str, Any], run: str) -> dict[str, Any]:
        from deccm import pipeline

        return pipeline.evaluate_candidates(cfg, run)

    @task
    def gate(cfg: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
        from deccm import pipeline

        return pipeline.gate(cfg, evaluation)

    @task
    def register(cfg: dict[str, Any], run: str, decision: dict[str, Any]) -> dict[str, Any]:
        from deccm import pipeline

        return pipeline.register(cfg, run, decision)

    cfg = config()
    stores = extract.partial(cfg=cfg).expand(shard=plan_shards(cfg))
    data = prepare_data(cfg, stores)
    run = train_student(cfg, data, train_teacher(cfg, data))
    register(cfg, run, gate(cfg, evaluate(cfg, run)))


deccm_retrain()
