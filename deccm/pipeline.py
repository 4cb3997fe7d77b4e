"""The retraining pipeline as plain stage functions; the Airflow DAG (``dags/deccm_retrain.py``) calls them in order.

extract (mapped over shards of new media) → prepare data → train the teacher → train the
student → evaluate challenger and champion → gate → register (and promote).

Every stage takes and returns JSON-able values (Airflow passes them between tasks) and is
safe to call again: extraction answers from the content-hash cache, datasets are reused
or re-assembled only when their inputs changed, training resumes or returns a finished run
(``train(resume="auto")``), and registering the same weights returns their version. Run dirs
are named after the data they saw, so new data means new runs and a rerun means none.
``python -m deccm.pipeline run`` runs every stage in this process (no Airflow needed).

:func:`ensure_champion` (what ``make demo`` runs) also registers a baseline beside the
champion (:func:`ensure_baseline`: the closed-form ridge map, alias ``baseline``), so the
demo compares two real rankings from the first run.

Writers lock what they write (``deccm.locks``): training its run dir, data preparation,
registration, ``run_all`` and ``ensure_champion`` the pipeline state. The source a
scheduled run trains on comes from deployment config, ``$DECCM_SOURCE``
(:func:`scheduled_source`); local runs without it keep the demo corpus.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from deccm import config, gate as gating, locks, registry, settings, tracking
from deccm import logsetup as _log
from deccm.data import DatasetError, load_dataset
from deccm.moments import WindowSpec
from deccm.runs import RunError, TrainConfig, check_data, pgc_hash, read_config
from deccm.settings import ENV_SOURCE, SOURCES, TRAINING
from deccm.train import configs_from_dict, train
from deccm.variants import VARIANTS, default_variant

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = settings.defaults(settings.Pipeline)  # the settings themselves: deccm.settings.Pipeline
MEDIA_KEYS = ("videos", "tracks", "logs", "tracks_meta", "pgc", "pgc_pairs")
# The model registered beside the champion (alias baseline) by ensure_champion, and why (its card and MLflow run say so).
BASELINE_VARIANT = "ridge"
BASELINE_PURPOSE = ("The baseline beside the champion: the closed-form ridge map from video to music features (variant "
                    "ridge, λ chosen on val), the first model a careful reviewer would try. It is fitted in seconds with no "
                    "training loop, on the champion's own dataset, so `make demo` registers it on a fresh install and the "
                    "demo's side by side shows what the trained champion changes over a linear map. Registering it never "
                    "promotes it: it holds the alias baseline, not challenger.")


def scheduled_source() -> str:
    """The source a scheduled (Airflow) run trains on: ``$DECCM_SOURCE``, never a silent demo corpus.

    A deployment fed with real media must not lose its champion to a model trained on the
    generated corpus because a setting was forgotten, so unset is an error here.
    """
    source = os.environ.get(ENV_SOURCE, "").strip()
    if not source:
        raise ValueError(f"{ENV_SOURCE} is not set: a scheduled run does not guess its data. Fix: set {ENV_SOURCE} in the "
                         f"deployment (docker/compose.yaml, docker/env.example) to one of {', '.join(SOURCES)}.")
    if source not in SOURCES:
        raise ValueError(f"{ENV_SOURCE}={source!r} is unknown; choose one of {', '.join(SOURCES)}")
    return source


def make_config(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults ← ``$DECCM_SOURCE`` ← params (Airflow params, CLI values), validated; the one config every stage takes."""
    params = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
    if "source" not in params and os.environ.get(ENV_SOURCE, "").strip():
        params["source"] = os.environ[ENV_SOURCE].strip()
    cfg = {**DEFAULTS, **settings.convert(settings.Pipeline, params, "pipeline settings")}
    if cfg["variant"] is None and cfg["mode"] == "faithful" and "variant" not in TRAINING.get(str(cfg["source"]), {}):
        cfg["variant"] = default_variant("faithful")  # faithful mode reproduces the authors' full DecCM
    for k, v in {**TRAINING["default"], **TRAINING.get(str(cfg["source"]), {})}.items():
        if cfg[k] is None:
            cfg[k] = v
    gate_config(cfg)  # the gate's bounds, checked before any stage runs (deccm.gate.GateConfig)
    window_spec(cfg)  # and the moments' window
    if cfg["source"] == "media":
        missing = [k for k in ("videos", "tracks", "logs", "tracks_meta") if not cfg.get(k)]
        if missing:
            raise ValueError(f"source 'media' needs {', '.join(missing)} (folders of clips and tracks, the usage-log CSV "
                             "video,track[,uploader] and the track metadata CSV)")
        if bool(cfg.get("pgc")) != bool(cfg.get("pgc_pairs")):
            raise ValueError("give both pgc (a folder of professionally edited clips) and pgc_pairs (CSV segment,track), or neither")
        for k in MEDIA_KEYS:
            if cfg.get(k):
                cfg[k] = str(Path(cfg[k]).expanduser().resolve())
    return cfg


def _work(*parts: str) -> Path:
    return config.state_path("pipeline", *parts)


# --------------------------------------------------------------------------- extraction


def plan_shards(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The media files to extract, in ``cfg['shards']`` shards per kind; [] for generated sources."""
    from deccm.features import collect_inputs

    if cfg["source"] != "media":
        return []
    out = []
    for kind, key in (("videos", "videos"), ("music", "tracks"), ("pgc", "pgc")):
        if not cfg.get(key):
            continue
        items = collect_inputs("music" if kind == "music" else "videos", cfg[key])
        n = min(cfg["shards"], len(items))
        for i in range(n):
            part = items[i::n]
            out.append({"kind": kind, "index": i, "of": n, "ids": [it.id for it in part], "paths": [str(it.path) for it in part]})
    return out


def extract_shard(cfg: dict[str, Any], shard: dict[str, Any]) -> str:
    """Extract one shard into its own feature store (cached by content: a rerun extracts nothing); returns the store dir."""
    from deccm.features import extract_batch
    from deccm.features.store import store_dir

    kind = "music" if shard["kind"] == "music" else "videos"
    out = _work("shards", shard["kind"], f"shard-{shard['index']:03d}-of-{shard['of']:03d}")
    store = extract_batch(kind, [Path(p) for p in shard["paths"]], out, ids=list(shard["ids"]), workers=1,
                          device=cfg["device"], progress=True)
    log.info("%s shard %d/%d: %s", shard["kind"], shard["index"] + 1, shard["of"], store.run)
    return str(store_dir(out, kind))


def _merge(kind: str, stores: list[str]) -> Path:
    from deccm.features import load_store
    from deccm.features.batch import normalise
    from deccm.features.store import merge_stores, store_dir

    merged = merge_stores([load_store(s) for s in sorted(stores)])
    if merged.kind == "music":
        normalise(merged)  # fitted on the whole catalog, not per shard
    dest = store_dir(_work("stores", kind), "music" if kind == "music" else "videos")
    merged.save(dest)
    return dest


# --------------------------------------------------------------------------- data


def prepare_data(cfg: dict[str, Any], stores: list[str] | None = None) -> str:
    """The dataset to train on: generated once per (source, seed), or assembled from the extracted shards."""
    with locks.pipeline_lock():
        return _prepare_data(cfg, stores)


def _prepare_data(cfg: dict[str, Any], stores: list[str] | None) -> str:
    source, seed = cfg["source"], cfg["seed"]
    if source.startswith("synth-"):
        from deccm.data.synth import synth

        dest = config.data_dir(f"{source}-s{seed}")
        if not (dest / "dataset.json").is_file():
            synth(dest, preset=source.removeprefix("synth-"), seed=seed, overwrite=dest.exists())
        return str(dest)
    if source.startswith(("demo", "recorded")):
        from deccm.data.corpus import build_corpus, default_dest

        size = {"demo-tiny": "tiny", "demo": "default"}.get(source, source)
        dest = default_dest(size)
        dest = dest.with_name(dest.name + (f"-s{seed}" if seed else ""))
        if not (dest / "dataset.json").is_file():
            build_corpus(dest, size=size, seed=seed, overwrite=dest.exists())
        return str(dest)
    from deccm.data.assemble import AssembleConfig, assemble

    by_kind: dict[str, list[str]] = {}
    for s in stores or []:
        by_kind.setdefault(Path(s).resolve().relative_to(_work("shards").resolve()).parts[0], []).append(s)  # shards/<kind>/…
    if not by_kind.get("videos") or not by_kind.get("music"):
        raise DatasetError("source 'media': no extracted video or music shards were passed to prepare_data. "
                           "Fix: run plan_shards and extract_shard first (the DAG does).")
    merged = {kind: _merge(kind, paths) for kind, paths in by_kind.items()}
    acfg = AssembleConfig(videos=merged["videos"], tracks=merged["music"], logs=cfg["logs"], tracks_meta=cfg["tracks_meta"],
                          pgc=merged.get("pgc"), pgc_pairs=cfg.get("pgc_pairs") if "pgc" in merged else None, seed=seed,
                          name="media")
    return str(assemble(acfg, config.data_dir("media"), overwrite=True))  # same inputs: returned untouched


# --------------------------------------------------------------------------- training


def _train_config(cfg: dict[str, Any], epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["train_seed"], device=cfg["device"])


def _tracked(kind: str, data: str, out: Path, variant: str, cfg: dict[str, Any], epochs: int, teacher: str | None) -> str:
    model = {"balance_blocks": cfg["balance_blocks"]}
    if kind == "student" and teacher is None:
        model["distill"] = "off"  # see student_variant
    mcfg, _, _ = configs_from_dict({"mode": cfg["mode"], "variant": variant if kind == "student" else "deccm", "model": model})
    with locks.run_lock(out):  # a DAG run and `make pipeline` may train the same run dir
        tracker = tracking.TrainingTracker(out, strict=True)  # the pipeline registers from MLflow: tracking must work
        run = train(kind, data, out, mcfg, _train_config(cfg, epochs), teacher=teacher, variant=variant,  # type: ignore[arg-type]
                    resume="auto", overwrite=True, on_epoch_end=tracker.on_epoch)
        tracker.finish()
    return str(run)


def _settings_tag(**settings: Any) -> str:
    """8 hex digits naming every setting that shapes a run, so other settings never share (or overwrite) a run dir."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _model_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Model settings that name a run only when they are on, so runs made before a setting existed keep their names."""
    return {"balance_blocks": True} if cfg["balance_blocks"] else {}


def train_teacher(cfg: dict[str, Any], data: str) -> str | None:
    """The PGC teacher; an unchanged PGC part and config return the existing teacher untouched.

    None when the data has no PGC part, or when the student variant does not distil.
    """
    if VARIANTS[cfg["variant"]].get("distill") == "off":
        log.info("variant %s does not distil: no teacher", cfg["variant"])
        return None
    ds = load_dataset(data)
    h = pgc_hash(ds)
    if h is None:
        log.info("%s has no PGC part: no teacher; the student trains without distillation", data)
        return None
    epochs = cfg["teacher_epochs"] or cfg["epochs"]
    tag = _settings_tag(mode=cfg["mode"], epochs=epochs, lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["train_seed"],
                        **_model_settings(cfg))
    out = config.runs_dir() / "pipeline" / f"teacher-{cfg['mode']}-e{epochs}-pgc{h[:12]}-{tag}"
    return _tracked("teacher", data, out, "teacher", cfg, epochs, None)


def student_variant(cfg: dict[str, Any], teacher: str | None) -> str:
    """The configured variant, or its non-distilled form when the data has no PGC part to train a teacher on.

    Variants whose non-distilled form has no name of its own (``adversarial``, ``erased``)
    keep their name and train with ``distill=off`` (recorded in the run's model config).
    ``erased-residual`` and ``blend`` read content off the PGC pairs, so without them they become ``erased``.
    """
    variant = cfg["variant"]
    if teacher is None and VARIANTS[variant].get("distill") != "off":
        fallback = {"deccm": "no-distill", "no-deconf": "plain", "erased-residual": "erased",
                    "blend": "erased"}.get(variant, variant)
        log.warning("variant %s distils from a teacher and this data has no PGC part: training %s without distillation",
                    variant, fallback)
        return fallback
    return variant


def train_student(cfg: dict[str, Any], data: str, teacher: str | None) -> str:
    """The student (tracked live in MLflow); a finished run of the same data and config is returned untouched."""
    ds = load_dataset(data)
    variant = student_variant(cfg, teacher)
    tag = _settings_tag(variant=variant, mode=cfg["mode"], epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                        seed=cfg["train_seed"], teacher=Path(teacher).name if teacher else None, **_model_settings(cfg))
    out = config.runs_dir() / "pipeline" / f"student-{variant}-{cfg['mode']}-e{cfg['epochs']}-{ds.manifest_hash[:12]}-{tag}"
    return _tracked("student", data, out, variant, cfg, cfg["epochs"], teacher)


# --------------------------------------------------------------------------- evaluation, gate, registry


def _values(res: Any) -> dict[str, float]:
    return {k: float(v) for k, v in res.values.items()}


def gate_config(cfg: dict[str, Any]) -> gating.GateConfig:
    """The gate's settings from the pipeline's; ``GateConfig`` checks their bounds."""
    return gating.GateConfig(metric=cfg["gate_metric"], split=cfg["gate_split"], margin=cfg["gate_margin"],
                             floor=cfg["gate_floor"], bias_tolerance=cfg["bias_tolerance"])


def evaluate_candidates(cfg: dict[str, Any], run: str) -> dict[str, Any]:
    """The challenger and the current champion scored on the same splits of the challenger's data.

    ``evaluation["gate"]`` holds what the gate decides on (``deccm.gate.score``): both models
    on the gate split, their paired comparison and taste probes. A dataset without a
    ``gate`` split falls back to ``val`` (which chose the challenger's epoch) with a warning
    the decision repeats.
    """
    from deccm.evaluate import evaluate_split
    from deccm.serve import load_ranker

    gcfg = gate_config(cfg)
    conf = read_config(run)
    ds = load_dataset(conf.data_path)
    splits = [s for s in ("val", "gate", "test", "test_oracle") if s in ds.ugc.rank_splits()]
    challenger = load_ranker(run, cfg["device"])
    out: dict[str, Any] = {"run": str(run), "data": str(conf.data_path), "splits": splits,
                           "challenger": {s: _values(evaluate_split(challenger, ds, s)) for s in splits},
                           "champion": None, "champion_version": registry.champion_version(), "comparable": False,
                           "notes": []}
    champ_ranker = None
    if out["champion_version"] is not None:
        champ = registry.load(out["champion_version"], device=cfg["device"], extractor=False)  # the version seen, not a later one
        try:
            check_data(champ.run, ds, f"champion v{out['champion_version']}")
            if champ.run.synthetic != conf.synthetic:
                raise RunError(f"champion v{out['champion_version']} was trained on {tracking.provenance(champ.run)} data, "
                               f"the challenger on {tracking.provenance(conf)}: their scores do not compare")
        except RunError as e:
            out["why_not_comparable"] = str(e)
            log.warning("the champion cannot score this data, so the floors decide: %s", e)
        else:
            out["comparable"] = True
            champ_ranker = champ.ranker
            out["champion"] = {s: _values(evaluate_split(champ.ranker, ds, s)) for s in splits}
    split = gcfg.split
    if split not in splits:
        note = (f"WARNING: {conf.data_path} has no '{split}' split (made before it existed, or by a generator without one: "
                f"the demo corpora), so the gate scores on "
                f"'{gating.FALLBACK_SPLIT}', the split that chose the challenger's epoch; re-create the dataset for a held-out gate")
        log.warning(note)
        out["notes"].append(note)
        split = gating.FALLBACK_SPLIT
    out["gate"] = gating.score(ds, split, challenger, champ_ranker, gcfg)
    run_id = tracking.find_run(run, conf)
    if run_id is not None:
        tracking.log_evaluation(run_id, out["challenger"])
    return out


def gate(cfg: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Promote or not (``deccm.gate.decide``); the decision and every number go to the log and the MLflow run."""
    decision = gating.decide(evaluation["gate"], gate_config(cfg), notes=tuple(evaluation.get("notes", ())))
    decision.update(run=evaluation["run"], champion_version=evaluation.get("champion_version"), evaluation=evaluation)
    verdict = "PROMOTE" if decision["promote"] else "KEEP the champion"
    log.info("gate: %s (%s vs champion v%s)", verdict, evaluation["run"], evaluation.get("champion_version"))
    for reason in decision["reasons"]:
        log.info("gate: %s", reason)
    run_id = tracking.find_run(evaluation["run"])
    if run_id is not None:
        tracking.log_decision(run_id, decision)
    return decision


def window_spec(cfg: dict[str, Any]) -> WindowSpec:
    """The moments' window spec the registered model carries (deccm.moments.WindowSpec checks its bounds)."""
    try:
        return WindowSpec(hop_s=float(cfg.get("window_hop_s", DEFAULTS["window_hop_s"])))
    except ValueError as e:
        raise ValueError(f"pipeline settings: window_hop_s: {e}") from None


def register(cfg: dict[str, Any], run: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Register the student (alias challenger); promote it to champion when the gate said so and the registry allows.

    The registry's rules (docs/architecture.md, "The registry's state machine") can keep the
    champion although the gate said promote: the version was rolled back or rejected before,
    the champion cannot be compared with it (a person decides), or the champion moved since
    the evaluation (compare-and-swap). Each is logged and returned in ``held``.
    """
    with locks.pipeline_lock():
        version = registry.register(run, decision.get("evaluation"), window=window_spec(cfg))
        evaluation = decision.get("evaluation") or {}
        seen = decision.get("champion_version", evaluation.get("champion_version"))
        held = None
        if decision["promote"]:
            if (why := registry.blocked(version)) is not None:
                held = f"version {version} is not promoted automatically ({why}); `deccm registry clear {version}` lifts it"
            elif seen is not None and not evaluation.get("comparable", False):
                held = (f"champion v{seen} cannot be compared with this challenger "
                        f"({evaluation.get('why_not_comparable', 'other data')}); a person decides: "
                        f"`deccm registry promote {version}`")
        registry.tag_decision(version, decision, held)
        if decision["promote"] and held is None:
            try:
                registry.promote(version, reason="gate: " + "; ".join(decision["reasons"]), expected_champion=seen)
            except registry.ChampionMoved as e:
                held = str(e)
        if held is not None:
            log.warning("the champion stays: %s", held)
        champion = registry.champion_version()
    log.info("registered %s as version %s; champion is version %s", run, version, champion)
    return {"version": version, "promoted": bool(decision["promote"]) and held is None and champion == version,
            "champion": champion, "held": held}


# --------------------------------------------------------------------------- all stages in one process


def run_all(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every stage in order, in this process (the DAG's work without Airflow); returns the registration.

    Holds the pipeline lock throughout, so a second pipeline on the same state dir waits or
    fails with who holds it (``$DECCM_LOCK_TIMEOUT``).
    """
    with locks.pipeline_lock():
        return _run_all(make_config(params))


def _run_all(cfg: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    stages: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        log.info("pipeline: %s …", name)
        out = fn(*args)
        stages[name] = time.perf_counter() - t
        log.info("pipeline: %s done in %.1f s", name, stages[name])
        return out

    shards = timed("plan", plan_shards, cfg)
    stores = [timed(f"extract {s['kind']} {s['index'] + 1}/{s['of']}", extract_shard, cfg, s) for s in shards]
    data = timed("prepare data", prepare_data, cfg, stores)
    teacher = timed("train teacher", train_teacher, cfg, data)
    run = timed("train student", train_student, cfg, data, teacher)
    evaluation = timed("evaluate", evaluate_candidates, cfg, run)
    decision = timed("gate", gate, cfg, evaluation)
    result = timed("register", register, cfg, run, decision)
    return {**result, "run": run, "data": data, "teacher": teacher, "promote": decision["promote"],
            "reasons": decision["reasons"], "seconds": stages, "total_s": time.perf_counter() - t0}


def ensure_champion(params: dict[str, Any] | None = None) -> str:
    """The champion's version; when none is registered, run every stage once first (what ``make demo`` needs).

    Then the baseline beside it (:func:`ensure_baseline`), also on registries that have a
    champion and no baseline yet (made before it existed), so the demo's side by side has a
    second real ranking from the first run. An unreachable registry raises
    :class:`deccm.registry.RegistryUnavailable`: an outage is not "no champion", and must
    never start a training.
    """
    with locks.pipeline_lock():
        version = _ensure_champion(params)
        ensure_baseline(params)
        return version


def source_provenance(source: str) -> str | None:
    """How the models a source trains describe their data (the start of ``tracking.provenance``); None for 'media'."""
    for prefix, words in (("synth-", "synthetic"), ("demo", "demo corpus"), ("recorded", "recorded corpus")):
        if source.startswith(prefix):
            return words
    return None


def _ensure_champion(params: dict[str, Any] | None) -> str:
    version = registry.champion_version()
    if version is not None:
        source = make_config(params)["source"]
        want = source_provenance(source)
        have = next((r["provenance"] for r in registry.list_versions() if r["version"] == str(version)), "")
        if want is not None and have and not have.startswith(want):
            raise registry.RegistryError(
                f"the registry's champion ({registry.MODEL_NAME} v{version}) was trained on {have} data, and this run asks "
                f"for source {source!r} ({want}): one registry serves one catalog. Fix: give each source a state dir of its "
                f"own (DECCM_HOME=another/folder; make demo keeps DEMO_SOURCE=demo in $DECCM_HOME and any other source in "
                f"$DECCM_HOME/<source>), or ask for the source this registry holds.")
        log.info("champion: %s version %s", registry.MODEL_NAME, version)
        return version
    log.info("no champion registered yet: running the pipeline once (%s)", make_config(params)["source"])
    result = run_all(params)
    if result["champion"] is None:
        raise registry.RegistryError(f"the pipeline ran but registered no champion: {'; '.join(result['reasons'])}. "
                                     "Fix: train longer (--epochs) or lower --gate-floor.")
    return str(result["champion"])


def ensure_baseline(params: dict[str, Any] | None = None) -> str | None:
    """The ``baseline`` version: when none is registered, fit :data:`BASELINE_VARIANT` on the champion's dataset and
    register it with alias ``baseline`` (never challenger or champion; :data:`BASELINE_PURPOSE` on its card, version and
    MLflow run). None, with a warning that says why, when there is no champion or no baseline can be made beside it.

    Cheap to call again: an existing alias returns at once. After an interruption the
    finished run is returned untouched (``train(resume="auto")``) and registering finds its
    version by its weights, so nothing is fitted or registered twice. The baseline is
    evaluated like a challenger (its figures beside the champion's on the same rows), but no
    gate runs on it: the champion alias is never touched here.
    """
    with locks.pipeline_lock():
        return _ensure_baseline(params)


def _ensure_baseline(params: dict[str, Any] | None) -> str | None:
    version = registry.alias_version(registry.BASELINE)
    if version is not None:
        log.info("baseline: %s version %s", registry.MODEL_NAME, version)
        return version
    champion = registry.champion_version()
    if champion is None:
        log.warning("no baseline registered: there is no champion to compare it with yet")
        return None
    cfg = make_config(params)
    champ = registry.load(champion, device=cfg["device"], extractor=False).run
    if champ.variant == BASELINE_VARIANT:
        log.warning("no baseline registered: champion v%s is itself the %s baseline", champion, BASELINE_VARIANT)
        return None
    cfg = make_config({**(params or {}), "variant": BASELINE_VARIANT, "mode": champ.mode, "balance_blocks": False})
    log.info("no baseline registered yet: fitting %s on champion v%s's dataset %s", BASELINE_VARIANT, champion,
             champ.data_path)
    try:
        run = train_student(cfg, str(champ.data_path), None)
    except (RunError, DatasetError) as e:
        log.warning("no baseline registered beside champion v%s: %s. The demo compares the champion with an earlier version "
                    "instead, if there is one. Fix: restore that dataset and run `deccm pipeline ensure` again.", champion, e)
        return None
    version = registry.register(run, evaluate_candidates(cfg, run), alias=registry.BASELINE, purpose=BASELINE_PURPOSE)
    log.info("baseline: %s version %s (%s), beside champion v%s", registry.MODEL_NAME, version, BASELINE_VARIANT, champion)
    return version


def build_parser(prog: str = "deccm pipeline") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every stage once in this process and register the student")
    e = sub.add_parser("ensure", help="make sure a champion is registered (run every stage once if there is none) and a "
                                      f"baseline beside it ({BASELINE_VARIANT}, alias baseline)")
    for sp in (r, e):
        settings.add_options(sp, settings.Pipeline)
    d = sub.add_parser("defaults", help="print the default settings and the per-source training settings as JSON")
    d.add_argument("--markdown", action="store_true", help="every setting as a markdown table instead (dags/README.md)")
    return p


def main(argv: list[str] | None = None, prog: str = "deccm pipeline") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    if args.cmd == "defaults":
        print(settings.table(settings.Pipeline) if args.markdown else json.dumps({**DEFAULTS, "training_per_source": TRAINING}, indent=2))
        return 0
    params = {k: getattr(args, k) for k in DEFAULTS}
    try:
        if args.cmd == "ensure":
            print(f"champion: {registry.MODEL_NAME} version {ensure_champion(params)}")
            baseline = registry.alias_version(registry.BASELINE)
            print(f"baseline: {registry.MODEL_NAME} version {baseline}" if baseline else "baseline: none (the log says why)")
            return 0
        result = run_all(params)
    except (ValueError, RunError, DatasetError, registry.RegistryError, locks.LockHeld) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("version", "promoted", "champion", "run", "reasons", "total_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.pipeline"))
