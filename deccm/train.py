"""Training loops for the teacher (docs/method.md §4), the student (§5) and the neural baselines.

``python -m deccm.train teacher --data DIR`` then ``python -m deccm.train student --data
DIR``. The run directory is owned by :mod:`deccm.runs`: one atomic ``state.pt`` per epoch
(weights, optimiser, RNG, history, best-so-far), with ``config.json`` and ``best.pt``
as copies, so a crash at any point leaves a whole record and a resumed run ends with
exactly the weights and history of an uninterrupted one.

:func:`train` is a pipeline stage: with ``resume="auto"`` a finished run is returned as
is, a partial one resumes, and nothing starts a new one. ``overwrite`` trains the new
run beside the old one and swaps it in only once its first epoch is recorded.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from deccm import config, distributed, locks, metrics, safeio, settings
from deccm import logsetup as _log
from deccm.data import Dataset, DatasetError, load_dataset
from deccm.evaluate import sampled_hit_rate
from deccm.models import CrossModalVAE, DecCMStudent, ModelConfig, RidgeMatcher
from deccm.models.ridge import RidgeSolver, lambda_grid
from deccm.runs import (
    BEST,
    Kind,
    RunConfig,
    RunError,
    TrainConfig,
    build_model,
    check_teacher,
    code_version,
    data_record,
    default_lr,
    default_run_dir,
    default_teacher,
    load_for_inference,
    open_run,
    read_config,
    record_path,
    refuse_to_replace,
    restore,
    save_epoch,
)
from deccm.serve import Ranker
from deccm.variants import MODES, RECOMMENDED, VARIANTS, default_variant

log = logging.getLogger(__name__)

DEFAULT_DATA = "synth-small"
Resume = bool | Literal["auto"]
EpochCallback = Callable[[dict[str, Any]], None]


class TrainingError(RunError):
    """Training cannot go on; the message says where and what to do."""


def configs_from_dict(settings: dict[str, Any]) -> tuple[ModelConfig, TrainConfig, str]:
    """``{"mode", "variant", "train": {...}, "model": {...}}`` (a TOML file, Airflow params) → configs.

    Missing keys take the defaults (fixed mode, :func:`default_variant`); unknown keys are an error.
    """
    unknown = set(settings) - {"mode", "variant", "train", "model"}
    if unknown:
        raise TrainingError(f"unknown top-level settings {sorted(unknown)}. Fix: use mode, variant, [train] and [model].")
    mvals = dict(settings.get("model") or {})
    mode = settings.get("mode") or mvals.pop("mode", None) or "fixed"
    if mode not in MODES:
        raise TrainingError(f"mode {mode!r} is unknown. Fix: faithful or fixed.")
    variant = settings.get("variant") or default_variant(mode)
    if variant not in VARIANTS:
        raise TrainingError(f"variant {variant!r} is unknown. Fix: one of {sorted(VARIANTS)}.")
    try:
        mcfg = ModelConfig.for_mode(mode, **{**VARIANTS[variant], **mvals})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"bad [model] settings ({e}).") from e
    return mcfg, TrainConfig.from_dict(dict(settings.get("train") or {})), variant


# --------------------------------------------------------------------------- data


@dataclass
class _Batches:
    """Feature tables on the device and the row index arrays of one training set."""

    x_v: torch.Tensor  # (N_video, F_v)
    x_m: torch.Tensor  # (N_music, F_m)
    video: torch.Tensor  # (N,) row → video id
    music: torch.Tensor  # (N,) row → track id
    prior: torch.Tensor | None  # (N, G)
    weight: torch.Tensor | None  # (N,) IPS weights, mean 1


def _tensor(a: np.ndarray, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.array(a), dtype=dtype, device=device)  # a copy: features may be read-only memory maps


def _training_rows(ds: Dataset, kind: Kind, cfg: ModelConfig, device: torch.device) -> _Batches:
    if kind == "teacher":
        if ds.pgc is None:
            raise TrainingError(f"{ds.root}: no pgc/ part, so no teacher can be trained. Fix: use a dataset with PGC pairs "
                                "(every `deccm data synth` preset has them).")
        p = ds.pgc
        return _Batches(_tensor(p.segment_features, device), _tensor(p.music_features, device),
                        _tensor(p.train.segment, device, torch.long), _tensor(p.train.music, device, torch.long), None, None)
    t = ds.ugc.train
    weight = None
    if cfg.ips:
        w = 1.0 / np.asarray(t.propensity, dtype=np.float64)
        weight = _tensor(w / w.mean(), device)
    return _Batches(_tensor(ds.ugc.video_features, device), _tensor(ds.ugc.music_features, device),
                    _tensor(t.video, device, torch.long), _tensor(t.music, device, torch.long), _tensor(t.prior, device), weight)


def _pgc_genre(ds: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment features, genre of the paired track) of the PGC training pairs: content read without uploader taste."""
    p = ds.pgc
    return (_tensor(p.segment_features[p.train.segment], device),
            _tensor(ds.ugc.music_genre[p.train.music], device, torch.long))


def _check_size(ds: Dataset, kind: Kind, n_rows: int, batch_size: int) -> None:
    if n_rows < 2:
        part = "pgc/train" if kind == "teacher" else "ugc/train"
        raise TrainingError(f"{ds.root}/{part}: {n_rows} training row(s); in-batch matching needs at least 2. "
                            "Fix: use a larger dataset (e.g. `deccm data synth --preset tiny`).")
    if batch_size < 2:
        raise TrainingError(f"batch size {batch_size} < 2: in-batch matching has no negatives. Fix: --batch-size 2 or more.")


# --------------------------------------------------------------------------- validation


def validate(model: CrossModalVAE | DecCMStudent, ds: Dataset, kind: Kind, k: int, device: torch.device) -> float:
    """Teacher: unweighted full-ranking HR@k on PGC val; student: weighted HR@k on UGC val (§4, §5.5).

    The student's score is ``deccm.evaluate``'s own computation, so the number that picks
    the best epoch is the number ``python -m deccm.evaluate RUN --split val`` prints.
    """
    model.eval()
    ranker = Ranker("val", model.video_embed, model.music_embed, device)
    if kind == "teacher":
        p = ds.pgc
        s = ranker.scores(p.segment_features[p.val.segment], p.music_features)
        return metrics.recall_at_k(metrics.catalog_rank(s, p.val.music), k)
    return sampled_hit_rate(ranker, ds, "val", k)


# --------------------------------------------------------------------------- the loop


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _teacher(kind: Kind, model_cfg: ModelConfig, variant: str, teacher: str | Path | None, ds: Dataset,
             device: torch.device) -> tuple[CrossModalVAE | None, RunConfig | None, Path | None]:
    """The frozen teacher a distilling student needs (default: the trained teacher of its mode and seed)."""
    if kind != "student" or model_cfg.distill == "off":
        return None, None, None
    if teacher is None:
        raise TrainingError(f"variant '{variant}' distils from a teacher and none is trained for mode {model_cfg.mode}. "
                            f"Fix: python -m deccm.train teacher --data {ds.root} (or --teacher RUN_DIR, or --variant no-distill).")
    path = Path(teacher).resolve()
    tconf = read_config(path)
    check_teacher(tconf, path, ds, model_cfg)
    model, tconf = load_for_inference(path, device)
    return model, tconf, path


def _fresh_config(kind: Kind, name: str, variant: str, model_cfg: ModelConfig, train_cfg: TrainConfig, ds: Dataset,
                  tconf: RunConfig | None, tpath: Path | None) -> RunConfig:
    teacher = None
    if tconf is not None and tpath is not None:
        teacher = {**record_path(tpath), "name": tconf.name, "best_sha256": safeio.sha256_file(tpath / BEST)}
    return RunConfig(name=name, kind=kind, variant=variant if kind == "student" else "teacher", model=model_cfg,
                     train=train_cfg, data=data_record(ds), prior_mean=np.asarray(ds.ugc.prior_mean, dtype=float).tolist(),
                     teacher=teacher, teacher_model=tconf.model.to_dict() if tconf else None, code_version=code_version())


def train(kind: Kind, data: str | Path | None = None, out: str | Path | None = None, model_cfg: ModelConfig | None = None,
          train_cfg: TrainConfig | None = None, teacher: str | Path | None = None, variant: str | None = None,
          resume: Resume = False, overwrite: bool = False, on_epoch_end: EpochCallback | None = None) -> Path:
    """Train one model into run dir ``out`` and return it.

    Defaults: ``data`` ``$DECCM_HOME/data/synth-small``; ``out`` ``$DECCM_HOME/runs/<runs.run_name>``;
    ``teacher`` the default teacher of the mode and seed when the variant distils; ``variant``
    names the run's student (without ``model_cfg`` it also picks the config: default
    :data:`RECOMMENDED`); a hand-built ``model_cfg`` without a name is recorded as ``custom``.
    ``resume``: False starts a new run (an existing one needs ``overwrite``), True continues
    one, ``"auto"`` returns a finished run as is, continues a partial one or starts afresh.
    A run with other settings is never resumed: with ``overwrite`` it is replaced, else refused.
    ``on_epoch_end`` receives each epoch's history entry (losses, val, rows/s, seconds, best).
    """
    train_cfg = train_cfg or TrainConfig()
    if model_cfg is None:
        variant = variant or RECOMMENDED
        model_cfg = ModelConfig.for_mode("fixed", **VARIANTS.get(variant, {}))
    variant = variant or "custom"
    if model_cfg.arch == "ridge" and distributed.world() > 1:
        raise TrainingError("the ridge baseline is one closed-form solve per λ; data parallelism has nothing to split. "
                            "Fix: run it without torchrun.")
    device = distributed.setup(config.resolve_device(train_cfg.device))  # under torchrun: join the group, this rank's GPU
    ds = load_dataset(data if data is not None else config.data_dir(DEFAULT_DATA))
    dims = ds.manifest["dims"]
    model_cfg = model_cfg.replace(video_dim=dims["video"], music_dim=dims["music"], n_genres=ds.n_genres)
    if model_cfg.arch == "ridge" and kind != "student":
        raise TrainingError("the ridge baseline is a student variant. Fix: train it with `deccm train student --variant ridge`.")
    if kind == "student" and model_cfg.ridge_blend > 0 and (model_cfg.arch != "vae" or model_cfg.confounder != "none"):
        raise TrainingError("ridge_blend appends a ridge map's vectors to a student's, so it needs arch=vae and confounder=none. "
                            "Fix: --variant blend, or ridge_blend = 0.")
    if kind == "student" and model_cfg.erase_residual and (not model_cfg.erase_taste or ds.pgc is None):
        raise TrainingError(f"{ds.root}: erase_residual keeps the taste that predicts the music on PGC pairs, so it needs "
                            "erase_taste and a dataset with a pgc/ part. Fix: --variant erased, or add PGC pairs.")
    out = Path(out if out is not None else default_run_dir(kind, variant, model_cfg.mode, train_cfg.seed)).resolve()
    main = distributed.is_main()  # only rank 0 writes the run dir
    if not resume:
        refuse_to_replace(out, overwrite)  # before the teacher is loaded: a new run never silently replaces one
    if teacher is None and kind == "student" and model_cfg.distill != "off":
        teacher = default_teacher(model_cfg.mode, train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    teacher_model, tconf, tpath = _teacher(kind, model_cfg, variant, teacher, ds, device)
    conf = _fresh_config(kind, out.name, variant, model_cfg, train_cfg, ds, tconf, tpath)
    opened = open_run(out, conf, resume, overwrite, write=main)
    distributed.barrier()  # the run dir is open before any process reads it
    if opened.finished:
        done = opened.stored
        log.info("%s: already finished (best epoch %d, val %.4f); nothing to do", out, done.best_epoch + 1, done.best_val)
        return out
    run_dir, resuming = opened.run_dir, opened.resuming

    model = build_model(kind, model_cfg, ds.ugc.prior_mean, teacher_model).to(device)
    if isinstance(model, RidgeMatcher):
        return _fit_ridge(model, ds, conf, run_dir, out, train_cfg, device, on_epoch_end)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=train_cfg.learning_rate(kind), weight_decay=train_cfg.weight_decay)
    rows = _training_rows(ds, kind, model_cfg, device)
    pgc_genre = _pgc_genre(ds, device) if model_cfg.erase_residual else None
    model.set_blocks(ds.feature_blocks("video"), ds.feature_blocks("music"))  # a no-op unless balance_blocks
    n = len(rows.video)
    _check_size(ds, kind, n, train_cfg.batch_size)

    if isinstance(model, DecCMStudent) and model.ridge is not None and not resuming:  # resumed: its buffers are restored
        _fit_ridge_part(model.ridge, rows, pgc_genre, ds, train_cfg.eval_k, device)
    start = 0
    best_model: dict[str, torch.Tensor] = {}
    if resuming:
        conf, state = restore(out, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        best_model = state["best_model"]
        start = int(state["epoch"]) + 1
        log.info("resuming %s at epoch %d (best so far %.4f at epoch %d)", out, start + 1, conf.best_val, conf.best_epoch + 1)

    log.info("training %s (%s, %s mode) on %s: %d rows, %d epochs, batch %d, lr %g, device %s%s", kind, conf.variant, model_cfg.mode,
             ds.manifest.get("name"), n, train_cfg.epochs, train_cfg.batch_size, train_cfg.learning_rate(kind), device,
             " [SYNTHETIC data]" if ds.is_synthetic else "")
    stale = conf.history[-1]["epoch"] - conf.best_epoch if conf.history else 0  # epochs since the best
    loss_of = distributed.loss_fn(model)  # model.loss, or through DDP under torchrun
    n_batches = math.ceil(n / train_cfg.batch_size)
    for epoch in range(start, train_cfg.epochs):
        t0 = time.perf_counter()
        kept = f"the last good epoch ({epoch}) is kept in {out}" if epoch > start or resuming else "no epoch was recorded"
        sums = _train_epoch(loss_of, model, opt, rows, epoch, train_cfg, f"{kind} epoch {epoch + 1}/{train_cfg.epochs}",
                            kept, quiet=not main)
        train_s = time.perf_counter() - t0
        if model_cfg.erase_taste and kind == "student":  # refit on this epoch's encoder, so val scores what serving will
            model.fit_eraser(rows.x_v, rows.video, rows.prior, pgc_genre)
        val = distributed.broadcast(validate(model, ds, kind, train_cfg.eval_k, device))
        improved = conf.best_val is None or val > conf.best_val
        entry = {"epoch": epoch, "val": val, "best": improved, "seconds": time.perf_counter() - t0, "rows_per_s": n / train_s,
                 **{k: v / n_batches for k, v in sums.items()}}
        best_model = _record(conf, entry, model, best_model)
        stale = 0 if improved else stale + 1
        stop = bool(train_cfg.patience) and stale >= train_cfg.patience
        conf.finished = stop or epoch == train_cfg.epochs - 1
        chosen = conf.finished and isinstance(model, DecCMStudent) and model.ridge is not None and ds.pgc is not None
        if chosen:  # in the same save as the last epoch: a finished blend always has its weights
            best_model, conf.blend = _choose_blend(model, best_model, ds, device)
        if main:
            run_dir = _save(run_dir, out, conf, model, opt.state_dict(), best_model, improved or chosen)
        log.info("epoch %d/%d loss %.4f val %s@%d %.4f%s (%.0f rows/s)", epoch + 1, train_cfg.epochs, entry["loss"],
                 "HR" if kind == "teacher" else "HR_w", train_cfg.eval_k, val, " *best*" if improved else "", entry["rows_per_s"])
        if on_epoch_end is not None and main:
            on_epoch_end(entry)
        if stop:
            log.info("early stop: no improvement for %d epochs (best %.4f at epoch %d)", stale, conf.best_val, conf.best_epoch + 1)
            break
    distributed.barrier()  # every process returns once rank 0 has written the last epoch
    return out


def _train_epoch(loss_of: Callable[..., tuple[torch.Tensor, dict[str, float]]], model: torch.nn.Module,
                 opt: torch.optim.Optimizer, rows: _Batches, epoch: int, train_cfg: TrainConfig, desc: str, kept: str,
                 quiet: bool) -> dict[str, float]:
    """One pass over the rows in an order fixed by (seed, epoch), so a resumed run sees the same stream; the loss parts
    summed over the batches and averaged over the processes. ``kept`` says what survives a non-finite loss."""
    model.train()
    ranks = distributed.world()
    if ranks > 1:  # the sampling noise differs per process, and an epoch's stream does not depend on resumes
        torch.manual_seed(train_cfg.seed * 1_000_003 + epoch * 1009 + distributed.rank())
    n = len(rows.video)
    gen = torch.Generator().manual_seed(train_cfg.seed * 100_003 + epoch)  # epoch order independent of resumes
    perm = torch.randperm(n, generator=gen).to(rows.video.device)
    n_batches = math.ceil(n / train_cfg.batch_size)
    sums: dict[str, float] = {}
    with tqdm(total=n, desc=desc, unit="rows", unit_scale=True, leave=False, disable=True if quiet else None) as bar:
        for step in range(n_batches):
            batch = perm[step * train_cfg.batch_size:(step + 1) * train_cfg.batch_size]
            if len(batch) < 2 * ranks:
                continue  # a final single row (per process) has no in-batch negative
            idx = distributed.shard(batch)
            prior = rows.prior[idx] if rows.prior is not None else None  # None for the teacher: PGC has no uploader
            w = rows.weight[idx] if rows.weight is not None else None
            loss, parts = loss_of(rows.x_v[rows.video[idx]], rows.x_m[rows.music[idx]], prior, rows.music[idx], w)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}/{n_batches} ({parts}); "
                                    f"{kept}. Fix: lower --lr or check the features for extreme values.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for key, val in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + val
            bar.update(len(batch))
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return distributed.mean(sums)


def _record(conf: RunConfig, entry: dict[str, Any], model: torch.nn.Module,
            best_model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Append an epoch's history entry; a best one moves best_epoch/best_val and copies the weights."""
    conf.history.append(entry)
    if not entry["best"]:
        return best_model
    conf.best_epoch, conf.best_val = entry["epoch"], entry["val"]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(run_dir: Path, out: Path, conf: RunConfig, model: torch.nn.Module, optimizer: dict[str, Any],
          best_model: dict[str, torch.Tensor], improved: bool) -> Path:
    """Write the epoch (``save_epoch``); a replacing run is swapped in at its first one. Returns where the run now is."""
    state = {"run": conf.to_dict(), "model": model.state_dict(), "optimizer": optimizer, "epoch": conf.history[-1]["epoch"],
             "rng": _rng_state()}
    save_epoch(run_dir, conf, state, best_model, improved)
    if run_dir != out:
        safeio.replace_dir(run_dir, out)  # the old run stayed whole until now
        log.info("the new run replaced the old one in %s", out)
    return out


def _fit_ridge(model: RidgeMatcher, ds: Dataset, conf: RunConfig, run_dir: Path, out: Path, train_cfg: TrainConfig,
               device: torch.device, on_epoch_end: EpochCallback | None) -> Path:
    """The ridge baseline: one closed-form solve per λ of the grid, each recorded like an epoch; the best on val is kept.

    A fit takes seconds, so an interrupted one starts again rather than resuming.
    """
    rows = _training_rows(ds, "student", model.cfg, device)
    t0 = time.perf_counter()
    solver = RidgeSolver(rows.x_v, rows.x_m, rows.video, rows.music)
    grid = lambda_grid(solver.n)
    pgc = _pgc_genre(ds, device) if model.cfg.erase_residual else None
    log.info("fitting the ridge baseline on %s: %d rows, %d λ values chosen on val (the epoch settings do not apply), device %s%s",
             ds.manifest.get("name"), solver.n, len(grid), device, " [SYNTHETIC data]" if ds.is_synthetic else "")
    conf.history, conf.best_epoch, conf.best_val = [], None, None
    best_model: dict[str, torch.Tensor] = {}
    for step, lam in enumerate(tqdm(grid, desc="ridge: λ on val", unit="λ", leave=False, disable=None)):
        val = _ridge_step(model, solver, lam, rows, pgc, ds, train_cfg.eval_k, device)
        improved = conf.best_val is None or val > conf.best_val
        entry = {"epoch": step, "lambda": lam, "val": val, "best": improved, "seconds": time.perf_counter() - t0,
                 "rows_per_s": solver.n / max(time.perf_counter() - t0, 1e-9)}
        best_model = _record(conf, entry, model, best_model)
        conf.finished = step == len(grid) - 1
        run_dir = _save(run_dir, out, conf, model, {}, best_model, improved)
        log.info("ridge λ=%.3g val HR_w@%d %.4f%s", lam, train_cfg.eval_k, val, " *best*" if improved else "")
        if on_epoch_end is not None:
            on_epoch_end(entry)
    return out


def _load_ridge(model: RidgeMatcher, solver: RidgeSolver, lam: float, rows: _Batches,
                pgc: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Load the solution for λ and its taste eraser (fitted per λ, so val scores what serving will)."""
    solver.load_into(model, lam)
    if model.cfg.erase_taste:
        model.fit_eraser(rows.x_v, rows.video, rows.prior, pgc)


def _ridge_step(model: RidgeMatcher, solver: RidgeSolver, lam: float, rows: _Batches,
                pgc: tuple[torch.Tensor, torch.Tensor] | None, ds: Dataset, k: int, device: torch.device) -> float:
    """:func:`_load_ridge`, then the val HR_w@k of that solution."""
    _load_ridge(model, solver, lam, rows, pgc)
    return validate(model, ds, "student", k, device)


def _fit_ridge_part(ridge: RidgeMatcher, rows: _Batches, pgc: tuple[torch.Tensor, torch.Tensor] | None, ds: Dataset,
                    k: int, device: torch.device) -> None:
    """The ridge map of a ``ridge_blend`` student: closed form on the training rows, λ chosen on val by itself."""
    solver = RidgeSolver(rows.x_v, rows.x_m, rows.video, rows.music)
    scored = [(_ridge_step(ridge, solver, lam, rows, pgc, ds, k, device), lam)
              for lam in tqdm(lambda_grid(solver.n), desc="blend: ridge λ on val", unit="λ", leave=False, disable=None)]
    val, lam = max(scored)
    _load_ridge(ridge, solver, lam, rows, pgc)
    log.info("blend: ridge part λ=%.3g (val HR_w@%d %.4f by itself)", lam, k, val)


# (student, ridge) weights a blend may take: from the student alone to the ridge map alone, equal say in the middle
BLEND_GRID: tuple[tuple[float, float], ...] = ((1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0), (0.25, 1.0), (0.0, 1.0))
BLEND_K = 10


def _choose_blend(model: DecCMStudent, best_model: dict[str, torch.Tensor], ds: Dataset,
                  device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The blend's (student, ridge) weights for its best epoch: the highest full-catalog Recall@10 on the PGC val pairs.

    PGC pairs carry no uploader, so their choices are content alone: the split says which part matches content better
    without the oracle (UGC val is drawn like the logs and rewards the taste). Ties go to the weights nearest equal say.
    The best epoch's weights get the choice; the live model is left as it was. docs/method.md §5.4.
    """
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_model)
    model.eval()
    p = ds.pgc
    ranker = Ranker("blend", model.video_embed, model.music_embed, device)
    equal = BLEND_GRID.index((1.0, 1.0))
    recall = {}
    for i, ab in enumerate(BLEND_GRID):
        model.blend.copy_(torch.tensor(ab))
        ranks = metrics.catalog_rank(ranker.scores(p.segment_features[p.val.segment], p.music_features), p.val.music)
        recall[i] = metrics.recall_at_k(ranks, BLEND_K)
    best = max(recall, key=lambda i: (recall[i], -abs(i - equal)))
    model.blend.copy_(torch.tensor(BLEND_GRID[best]))
    chosen = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(live)
    log.info("blend: weights (student, ridge) = %s, PGC val Recall@%d %.4f (equal weights: %.4f)", BLEND_GRID[best], BLEND_K,
             recall[best], recall[equal])
    return chosen, {"weights": list(BLEND_GRID[best]), "chosen_on": f"PGC val Recall@{BLEND_K}",
                    "pgc_val_recall": {f"{a:g}:{b:g}": recall[i] for i, (a, b) in enumerate(BLEND_GRID)}}


# --------------------------------------------------------------------------- CLI


def _load_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml  # ships with the pinned stack (mlflow, airflow)

            return yaml.safe_load(text) or {}
        return tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - any read or parse error becomes one clear message
        raise TrainingError(f"{path}: cannot read config ({e}). Fix: TOML or YAML with [train] and [model] tables.") from e


def build_parser(prog: str = "deccm train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True, metavar="{teacher,student}")
    for kind, helptext in (("teacher", "train the PGC teacher (§4): cross-modal VAE matching on professional music videos"),
                           ("student", "train the UGC student (§5) or a baseline variant, distilled from a teacher")):
        s = sub.add_parser(kind, help=helptext, description=helptext)
        s.add_argument("--data", type=Path, default=None, help=f"dataset dir (default: $DECCM_HOME/data/{DEFAULT_DATA})")
        s.add_argument("--out", type=Path, default=None,
                       help="run dir (default: $DECCM_HOME/runs/" + ("teacher-<mode>-s<seed>)" if kind == "teacher"
                                                                      else "student-<variant>-<mode>-s<seed>)"))
        s.add_argument("--mode", choices=MODES, default=None,
                       help="fixed (default) corrects the authors' bugs; faithful reproduces their computations")
        if kind == "student":
            s.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                           help=f"default: {RECOMMENDED} in fixed mode (the distilled student plus a ridge map, each with the "
                           "uploader taste beyond content erased from its video vectors: the best worst case measured, "
                           "docs/results.md), deccm in faithful mode (the paper's full student); the others are its parts, "
                           "baselines and ablations")
            s.add_argument("--teacher", type=Path, default=None,
                           help="teacher run dir for variants that distil (default: $DECCM_HOME/runs/teacher-<mode>-s<seed>)")
            s.add_argument("--distill-weight", type=float, default=None, help="α of the distillation term (default: 1.0 fixed, 5e-5 faithful)")
        s.add_argument("--config", type=Path, default=None, help="TOML/YAML file with mode, variant, [train] and [model]; flags win")
        settings.add_options(s, TrainConfig, help={"lr": f"learning rate (default: {default_lr(kind):g})"})
        s.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
        s.add_argument("--no-track", action="store_true", help="do not log the run to MLflow (default: logged live to "
                       "$MLFLOW_TRACKING_URI, else SQLite under $DECCM_HOME/mlflow)")
        s.add_argument("--overwrite", action="store_true",
                       help="replace an existing run (the old one stays until the new one has finished an epoch)")
        s.add_argument("-v", "--verbose", action="count", default=0)
    return p


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """defaults ← config file ← flags, as one plain dict for :func:`configs_from_dict`."""
    file = _load_file(args.config)
    settings = {"mode": file.get("mode"), "variant": file.get("variant"), "train": dict(file.get("train") or {}),
                "model": dict(file.get("model") or {})}
    extra = set(file) - set(settings)
    if extra:
        raise TrainingError(f"{args.config}: unknown settings {sorted(extra)}. Fix: use mode, variant, [train] and [model].")
    for f in fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            settings["train"][f.name] = v
    settings["mode"] = args.mode or settings["mode"]
    settings["variant"] = getattr(args, "variant", None) or settings["variant"]
    if getattr(args, "distill_weight", None) is not None:
        settings["model"]["distill_weight"] = args.distill_weight
    return settings


def main(argv: list[str] | None = None, prog: str = "deccm train") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    try:
        mcfg, tcfg, variant = configs_from_dict(settings_from_args(args))
        if args.kind == "teacher":
            variant = "teacher"
        out = args.out or default_run_dir(args.kind, variant, mcfg.mode, tcfg.seed)
        tracker = None
        if not args.no_track and distributed.is_main():  # under torchrun, rank 0 logs the run
            from deccm.tracking import TrainingTracker

            tracker = TrainingTracker(out)
        # one writer per run dir (docs/architecture.md, "Locks"); torchrun's ranks share theirs by design
        with locks.run_lock(out) if distributed.world() == 1 else contextlib.nullcontext():
            run = train(args.kind, args.data, out, mcfg, tcfg, teacher=getattr(args, "teacher", None), variant=variant,
                        resume=args.resume, overwrite=args.overwrite, on_epoch_end=tracker.on_epoch if tracker else None)
        if tracker is not None:
            tracker.finish()
        if distributed.is_main():
            conf = read_config(run)
            print(f"{run}: best epoch {conf.best_epoch + 1} val {conf.best_val:.4f}")
    except (RunError, DatasetError, locks.LockHeld) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.train"))
