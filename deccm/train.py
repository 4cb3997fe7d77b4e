"""Training loops for the teacher (§4), the student (§5) and the neural baselines.

``python -m deccm.train teacher --data DIR`` then ``python -m deccm.train student --data
DIR --teacher RUN``. A run dir holds ``config.json`` (everything needed to rebuild the
model, the data manifest hash, the history), ``last.pt`` (model + optimiser + RNG state
after the last finished epoch, for ``--resume``) and ``best.pt`` (the weights of the
best validation epoch). Every write is atomic, so a crash leaves the previous
checkpoint intact, and a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from deccm import config, io, metrics
from deccm import log as _log
from deccm.data import Dataset, DatasetError, load_dataset
from deccm.models import CrossModalVAE, DecCMStudent, ModelConfig
from deccm.serve import resolve_device

log = logging.getLogger(__name__)

Kind = Literal["teacher", "student"]
VARIANTS = {
    "deccm": {},  # the full student
    "plain": {"confounder": "none", "distill": "off"},  # plain cross-modal matching on UGC
    "no-distill": {"distill": "off"},
    "no-deconf": {"confounder": "none"},
    "ips": {"confounder": "none", "distill": "off", "ips": True},  # IPS-weighted plain matching
}
NEEDS_TEACHER = {"deccm", "no-deconf"}


class TrainingError(RuntimeError):
    """Training cannot go on; the message says where and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings; defaults are the authors' script defaults (§4, §5.5)."""

    lr: float | None = None  # None → 1e-4 for the teacher, 1e-3 for the student
    weight_decay: float = 1e-3
    batch_size: int = 1024
    epochs: int = 50
    seed: int = 1234
    eval_k: int = 25  # validation metric: (weighted) HR@25
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    device: str = "auto"

    def learning_rate(self, kind: Kind) -> float:
        return self.lr if self.lr is not None else (1e-4 if kind == "teacher" else 1e-3)


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


def _check_size(ds: Dataset, kind: Kind, n_rows: int, batch_size: int) -> None:
    if n_rows < 2:
        part = "pgc/train" if kind == "teacher" else "ugc/train"
        raise TrainingError(f"{ds.root}/{part}: {n_rows} training row(s); in-batch matching needs at least 2. "
                            "Fix: use a larger dataset (e.g. `deccm data synth --preset tiny`).")
    if batch_size < 2:
        raise TrainingError(f"batch size {batch_size} < 2: in-batch matching has no negatives. Fix: --batch-size 2 or more.")


# --------------------------------------------------------------------------- models


def build_model(kind: Kind, cfg: ModelConfig, prior_mean: np.ndarray | None = None,
                teacher: CrossModalVAE | None = None) -> CrossModalVAE | DecCMStudent:
    if kind == "teacher":
        return CrossModalVAE(cfg)
    return DecCMStudent(cfg, teacher, torch.as_tensor(prior_mean if prior_mean is not None else np.full(cfg.n_genres, 1 / cfg.n_genres)))


def read_config(run: Path) -> dict[str, Any]:
    """A run dir's ``config.json`` (model, data, history), without loading any weights."""
    path = run / "config.json"
    if not path.is_file():
        raise TrainingError(f"{run}: no config.json, so this is not a deccm run dir. Fix: pass the directory written by `python -m deccm.train`.")
    return json.loads(path.read_text())


def _load_state(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, weights_only=True, map_location=device)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[CrossModalVAE | DecCMStudent, dict[str, Any]]:
    """Rebuild a trained model (eval mode) from a run dir or a ``best.pt``/``last.pt`` in one."""
    path = Path(path)
    run, ckpt = (path, path / "best.pt") if path.is_dir() else (path.parent, path)
    device = torch.device(device) if isinstance(device, str) else device
    conf = read_config(run)
    if not ckpt.is_file():
        raise TrainingError(f"{ckpt}: missing; the run has not finished an epoch yet. Fix: train it (or --resume it) first.")
    cfg = ModelConfig.from_dict(conf["model"])
    teacher = CrossModalVAE(ModelConfig.from_dict(conf["teacher_model"])) if conf.get("teacher_model") else None
    model = build_model(conf["kind"], cfg, np.asarray(conf.get("prior_mean") or np.full(cfg.n_genres, 1 / cfg.n_genres)), teacher)
    state = _load_state(ckpt, device)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), conf


def check_feature_specs(a: dict[str, Any] | None, b: dict[str, Any] | None, what_a: str, what_b: str) -> None:
    """Refuse to pair models and data whose features were extracted differently (issue: never mix specs)."""
    from deccm.features.spec import SpecMismatch, require_same

    for kind in ("video", "music"):
        sa, sb = (a or {}).get(kind), (b or {}).get(kind)
        if sa is None and sb is None:
            continue
        if sa is None or sb is None:
            raise TrainingError(f"{what_a} and {what_b}: only one side records a {kind} extractor spec. "
                                "Fix: use features extracted by deccm.features on both sides.")
        try:
            require_same(sa, sb, what_a, what_b)
        except SpecMismatch as e:
            raise TrainingError(f"{kind}: {e}") from None


def _load_teacher(path: Path, ds: Dataset, cfg: ModelConfig, device: torch.device) -> tuple[CrossModalVAE, dict[str, Any]]:
    """The frozen teacher, refused when its dims or data differ from the student's (fixes §9.4)."""
    tconf = read_config(path if path.is_dir() else path.parent)
    if tconf.get("kind") != "teacher":
        raise TrainingError(f"{path}: is a {tconf.get('kind')} run, not a teacher. Fix: pass a run of `python -m deccm.train teacher`.")
    tm = tconf["model"]
    for key in ("video_dim", "music_dim", "latent_dim"):
        if tm[key] != getattr(cfg, key):
            raise TrainingError(f"{path}: teacher {key}={tm[key]} but the student needs {getattr(cfg, key)}. "
                                f"Fix: train the teacher on {ds.root} with the same latent size.")
    check_feature_specs(tconf["data"].get("features"), ds.manifest.get("features"), f"teacher {path}", f"student data {ds.root}")
    if tconf["data"]["manifest_hash"] != ds.manifest_hash:
        raise TrainingError(f"{path}: teacher was trained on data {tconf['data']['name']} (manifest {tconf['data']['manifest_hash'][:12]}), "
                            f"the student's data is {ds.manifest.get('name')} (manifest {ds.manifest_hash[:12]}). "
                            f"Fix: python -m deccm.train teacher --data {ds.root}")
    model, conf = load_model(path, device)
    return model, conf


# --------------------------------------------------------------------------- validation


def validate(model: CrossModalVAE | DecCMStudent, ds: Dataset, kind: Kind, k: int, device: torch.device) -> float:
    """Teacher: unweighted full-ranking HR@k on PGC val; student: weighted HR@k on UGC val (§4, §5.5)."""
    from deccm.serve import Ranker

    model.eval()
    ranker = Ranker("val", model.video_embed, model.music_embed, device)
    if kind == "teacher":
        p = ds.pgc
        s = ranker.scores(p.segment_features[p.val.segment], p.music_features)
        return metrics.recall_at_k(metrics.catalog_rank(s, p.val.music), k)
    v = ds.ugc.val
    q = ranker.video_vectors(ds.ugc.video_features[v.video])
    pm = ranker.music_vectors(ds.ugc.music_features)
    cand = v.candidates()
    s = np.einsum("nd,ncd->nc", q, pm[cand])  # (N, 101), column 0 the positive
    return metrics.hit_rate(metrics.positive_rank(s), k, v.weight)


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


def train(kind: Kind, data: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
          teacher: str | Path | None = None, variant: str = "deccm", resume: bool = False, overwrite: bool = False,
          on_epoch_end: Callable[[int, float], None] | None = None) -> Path:
    """Train one model into run dir ``out``; returns ``out``. See the module docstring."""
    out = Path(out)
    device = resolve_device(train_cfg.device)
    ds = load_dataset(data)
    dims = ds.manifest["dims"]
    model_cfg = model_cfg.replace(video_dim=dims["video"], music_dim=dims["music"], n_genres=ds.n_genres)
    if resume and not (out / "last.pt").is_file():
        raise TrainingError(f"{out}: nothing to resume (no last.pt). Fix: drop --resume to start this run.")
    if not resume and out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TrainingError(f"{out} already holds a run. Fix: --resume to continue it, --overwrite to start over, or --out elsewhere.")
        for f in ("last.pt", "best.pt", "config.json"):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(train_cfg.seed)
    teacher_model, teacher_conf = None, None
    if kind == "student" and model_cfg.distill != "off":
        if teacher is None:
            raise TrainingError(f"variant '{variant}' distils from a teacher. Fix: --teacher RUN_DIR "
                                f"(from `python -m deccm.train teacher --data {ds.root}`), or --variant no-distill.")
        teacher_model, teacher_conf = _load_teacher(Path(teacher), ds, model_cfg, device)
    model = build_model(kind, model_cfg, ds.ugc.prior_mean, teacher_model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=train_cfg.learning_rate(kind), weight_decay=train_cfg.weight_decay)
    rows = _training_rows(ds, kind, model_cfg, device)
    n = len(rows.video)
    _check_size(ds, kind, n, train_cfg.batch_size)

    conf: dict[str, Any] = {
        "name": out.name, "kind": kind, "variant": variant if kind == "student" else "teacher", "mode": model_cfg.mode,
        "model": model_cfg.to_dict(), "train": asdict(train_cfg),
        "teacher_model": teacher_conf["model"] if teacher_conf else None,
        "teacher": {"path": str(teacher), "name": teacher_conf["name"]} if teacher_conf else None,
        "prior_mean": np.asarray(ds.ugc.prior_mean, dtype=float).tolist(),
        "data": {"path": str(ds.root), "name": ds.manifest.get("name"), "manifest_hash": ds.manifest_hash,
                 "provenance": ds.manifest.get("provenance"), "synthetic": ds.is_synthetic,
                 "features": ds.manifest.get("features")},
        "history": [], "best_epoch": None, "best_val": None,
    }
    start = 0
    if resume:
        old = read_config(out)
        for key in ("kind", "variant", "model", "train"):
            if old[key] != conf[key]:
                raise TrainingError(f"{out}: --resume with a different {key} ({old[key]} vs {conf[key]}). Fix: resume with the run's own settings.")
        if old["data"]["manifest_hash"] != conf["data"]["manifest_hash"]:
            raise TrainingError(f"{out}: was trained on other data (manifest {old['data']['manifest_hash'][:12]}). Fix: resume with --data {old['data']['path']}.")
        state = _load_state(out / "last.pt", device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        conf.update(history=old["history"], best_epoch=old["best_epoch"], best_val=old["best_val"])
        start = int(state["epoch"]) + 1
        log.info("resuming %s at epoch %d (best so far %.4f at epoch %s)", out, start, conf["best_val"] or 0, conf["best_epoch"])

    log.info("training %s (%s, %s mode) on %s: %d rows, %d epochs, batch %d, lr %g, device %s%s", kind, conf["variant"], model_cfg.mode,
             ds.manifest.get("name"), n, train_cfg.epochs, train_cfg.batch_size, train_cfg.learning_rate(kind), device,
             " [SYNTHETIC data]" if ds.is_synthetic else "")
    stale = conf["history"][-1]["epoch"] - conf["best_epoch"] if conf["history"] else 0  # epochs since the best
    for epoch in range(start, train_cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(train_cfg.seed * 100_003 + epoch)  # epoch order independent of resumes
        perm = torch.randperm(n, generator=gen).to(device)
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(total=n, desc=f"{kind} epoch {epoch + 1}/{train_cfg.epochs}", unit="rows", unit_scale=True, leave=False,
                   disable=None)
        n_batches = math.ceil(n / train_cfg.batch_size)
        for step in range(n_batches):
            idx = perm[step * train_cfg.batch_size:(step + 1) * train_cfg.batch_size]
            if len(idx) < 2:
                continue  # a final single row has no in-batch negative
            x_v, x_m, music = rows.x_v[rows.video[idx]], rows.x_m[rows.music[idx]], rows.music[idx]
            w = rows.weight[idx] if rows.weight is not None else None
            if kind == "teacher":
                loss, parts = model.loss(x_v, x_m, music, w)
            else:
                loss, parts = model.loss(x_v, x_m, rows.prior[idx], music, w)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}/{n_batches} ({parts}). "
                                    f"The last good checkpoint (epoch {epoch}) is kept in {out}. Fix: lower --lr or check the features for extreme values.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for key, val in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + val
            bar.update(len(idx))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        train_s = time.perf_counter() - t0
        val = validate(model, ds, kind, train_cfg.eval_k, device)
        entry = {"epoch": epoch, "val": val, "seconds": time.perf_counter() - t0, "rows_per_s": n / train_s,
                 **{k: v / n_batches for k, v in sums.items()}}
        conf["history"].append(entry)
        improved = conf["best_val"] is None or val > conf["best_val"]
        if improved:
            conf.update(best_epoch=epoch, best_val=val)
            with io.atomic_path(out / "best.pt") as tmp:
                torch.save({"model": model.state_dict()}, tmp)
            stale = 0
        else:
            stale += 1
        with io.atomic_path(out / "last.pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "rng": _rng_state()}, tmp)
        io.write_json(out / "config.json", conf)
        log.info("epoch %d/%d loss %.4f val %s@%d %.4f%s (%.0f rows/s)", epoch + 1, train_cfg.epochs, entry["loss"],
                 "HR" if kind == "teacher" else "HR_w", train_cfg.eval_k, val, " *best*" if improved else "", entry["rows_per_s"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, val)
        if train_cfg.patience and stale >= train_cfg.patience:
            log.info("early stop: no improvement for %d epochs (best %.4f at epoch %d)", stale, conf["best_val"], conf["best_epoch"] + 1)
            break
    return out


# --------------------------------------------------------------------------- CLI


def _load_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # ships with the pinned stack (mlflow, airflow)

            return yaml.safe_load(text) or {}
        return tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear message
        raise TrainingError(f"{path}: cannot parse config ({e}). Fix: TOML or YAML with [train] and [model] tables.") from e


def build_parser(prog: str = "deccm train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["teacher", "student"])
    p.add_argument("--data", type=Path, default=None, help="dataset dir (default: $DECCM_HOME/data/synth-small)")
    p.add_argument("--out", type=Path, default=None, help="run dir (default: $DECCM_HOME/runs/<kind>-<variant>-<mode>-s<seed>)")
    p.add_argument("--teacher", type=Path, default=None, help="teacher run dir (student variants that distil)")
    p.add_argument("--mode", choices=["faithful", "fixed"], default=None, help="faithful = the authors' computations, bugs included")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None, help="student variant / baseline (default deccm)")
    p.add_argument("--config", type=Path, default=None, help="TOML/YAML file with [train] and [model] tables; flags win")
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=str if f.name == "device" else (int if f.type in ("int",) else float),
                       default=None, help=f"default {f.default}")
    p.add_argument("--distill-weight", type=float, default=None, help="α of the distillation term")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def config_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, str]:
    """defaults ← config file ← flags."""
    file = _load_file(args.config)
    tvals = dict(file.get("train", {}))
    mvals = dict(file.get("model", {}))
    for f in fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            tvals[f.name] = int(v) if f.name in ("batch_size", "epochs", "seed", "eval_k", "patience") else v
    mode = args.mode or mvals.pop("mode", "fixed")
    variant = args.variant or file.get("variant", "deccm")
    if args.distill_weight is not None:
        mvals["distill_weight"] = args.distill_weight
    unknown = set(tvals) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TrainingError(f"{args.config}: unknown [train] keys {sorted(unknown)}. Fix: use {[f.name for f in fields(TrainConfig)]}.")
    try:
        mcfg = ModelConfig.for_mode(mode, **{**VARIANTS[variant], **mvals})
    except (TypeError, ValueError) as e:
        raise TrainingError(f"{args.config}: bad [model] table ({e}).") from e
    return mcfg, TrainConfig(**tvals), variant


def main(argv: list[str] | None = None, prog: str = "deccm train") -> int:
    args = build_parser(prog).parse_args(argv)
    _log.setup(args.verbose)
    try:
        mcfg, tcfg, variant = config_from_args(args)
        data = args.data or config.data_dir("synth-small")
        name = f"{args.kind}-{mcfg.mode}-s{tcfg.seed}" if args.kind == "teacher" else f"student-{variant}-{mcfg.mode}-s{tcfg.seed}"
        out = args.out or config.state_path("runs", name)
        teacher = args.teacher
        if args.kind == "student" and teacher is None and mcfg.distill != "off":
            default = config.state_path("runs", f"teacher-{mcfg.mode}-s{tcfg.seed}")
            teacher = default if default.exists() else None
        run = train(args.kind, data, out, mcfg, tcfg, teacher=teacher, variant=variant, resume=args.resume, overwrite=args.overwrite)
        conf = read_config(run)
        print(f"{run}: best epoch {conf['best_epoch'] + 1} val {conf['best_val']:.4f}")
    except (TrainingError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m deccm.train"))
