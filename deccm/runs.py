"""The run directory: the contract for "a trained run" that training writes and everyone else reads.

A run dir holds::

    state.pt      THE record: model, optimiser and RNG state, history, best-so-far (epoch,
                  score, weights) and whether the run finished. Written atomically once per
                  epoch, so a crash at any point leaves the previous epoch's record whole.
    config.json   a JSON copy of the run config (what to rebuild, the data, the history);
                  rewritten from state.pt after it, and again whenever a run is reopened
    best.pt       a copy of the best epoch's weights, for inference

Everything else goes through this module: :class:`RunConfig` (typed), reading and
writing, :func:`load_for_inference`, the compatibility checks between a run and data
or a teacher (dims, data manifest hash, extractor specs), run naming, and one
:class:`RunError`. Paths a run records (its data, its teacher) are absolute, so they
resolve from any working directory; a recorded path under ``$DECCM_HOME`` is also kept
relative to it, so a moved state dir still finds its data.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from deccm import config, safeio, settings
from deccm.models import CrossModalVAE, DecCMStudent, ModelConfig, RidgeMatcher
from deccm.settings import SettingsError, setting

if TYPE_CHECKING:
    from deccm.data import Dataset

Kind = Literal["teacher", "student"]
CONFIG = "config.json"
STATE = "state.pt"
BEST = "best.pt"
RUN_FORMAT = "deccm-run"
RUN_FORMAT_VERSION = 2


class RunError(RuntimeError):
    """A run cannot be used as asked; the message names the run and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings; defaults are the authors' script defaults (docs/method.md §4, §5.5)."""

    lr: float | None = setting(None, "learning rate; empty = 1e-4 for the teacher, 1e-3 for the student", above=0.0)
    weight_decay: float = setting(1e-3, "Adam weight decay", minimum=0.0)
    batch_size: int = setting(1024, "rows per batch", minimum=2)
    epochs: int = setting(50, "training epochs", minimum=1)
    seed: int = setting(1234, "training seed (initialisation, shuffling)")
    eval_k: int = setting(25, "validation metric: (weighted) HR@k", minimum=1)
    patience: int = setting(0, "early stopping after this many epochs without improvement; 0 = off", minimum=0)
    device: str = setting("auto", "auto = CUDA when present; cpu, cuda or cuda:N")

    def learning_rate(self, kind: Kind) -> float:
        return self.lr if self.lr is not None else (1e-4 if kind == "teacher" else 1e-3)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a plain dict (a TOML table, Airflow params); unknown keys and refused values are errors."""
        try:
            return cls(**settings.convert(cls, d, "training settings"))
        except SettingsError as e:
            raise RunError(str(e)) from None


def default_lr(kind: Kind) -> float:
    return TrainConfig().learning_rate(kind)


# --------------------------------------------------------------------------- paths and names


def resolve_recorded(path: str, home_rel: str | None) -> Path:
    """A path a run recorded: as recorded when it exists, else relative to the current state dir."""
    p = Path(path)
    if not p.exists() and home_rel is not None and (config.home() / home_rel).exists():
        return config.home() / home_rel
    return p


def record_path(path: str | Path) -> dict[str, str | None]:
    """``{"path": absolute, "home_rel": relative to $DECCM_HOME or None}`` for a run to store."""
    p = Path(path).resolve()
    try:
        rel: str | None = p.relative_to(config.home()).as_posix()
    except ValueError:
        rel = None
    return {"path": str(p), "home_rel": rel}


def run_name(kind: Kind, variant: str, mode: str, seed: int) -> str:
    """The default name of a run: ``teacher-<mode>-s<seed>`` or ``student-<variant>-<mode>-s<seed>``."""
    return f"teacher-{mode}-s{seed}" if kind == "teacher" else f"student-{variant}-{mode}-s{seed}"


def default_run_dir(kind: Kind, variant: str, mode: str, seed: int) -> Path:
    """``$DECCM_HOME/runs/<run_name>``."""
    return config.runs_dir() / run_name(kind, variant, mode, seed)


def default_teacher(mode: str, seed: int) -> Path | None:
    """The teacher a student of this mode and seed distils from by default, if it was trained."""
    path = default_run_dir("teacher", "teacher", mode, seed)
    return path if (path / CONFIG).is_file() else None


# --------------------------------------------------------------------------- the config


@dataclass
class RunConfig:
    """Everything needed to rebuild, judge and reproduce a run; ``config.json`` is its JSON form."""

    name: str
    kind: Kind
    variant: str  # "teacher" for teachers
    model: ModelConfig
    train: TrainConfig
    data: dict[str, Any]  # path, home_rel, name, manifest_hash, provenance, synthetic, features, confounder
    prior_mean: list[float]
    teacher: dict[str, Any] | None = None  # path, home_rel, name, best_sha256 (which weights it distilled from)
    teacher_model: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    finished: bool = False
    code_version: str = ""
    blend: dict[str, Any] | None = None  # a blend student's (student, ridge) weights, chosen on PGC val (train.py)

    @property
    def mode(self) -> str:
        return self.model.mode

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("synthetic"))

    @property
    def data_path(self) -> Path:
        """The training data, resolved from any working directory."""
        return resolve_recorded(self.data["path"], self.data.get("home_rel"))

    @property
    def teacher_path(self) -> Path | None:
        if not self.teacher:
            return None
        return resolve_recorded(self.teacher["path"], self.teacher.get("home_rel"))

    def settings(self) -> dict[str, Any]:
        """What must match for a resume or an idempotent rerun to be the same run."""
        train = {k: v for k, v in asdict(self.train).items() if k != "device"}  # where it runs does not change the run
        data = self.data.get("pgc_hash") if self.kind == "teacher" else self.data["manifest_hash"]  # a teacher sees PGC only
        return {"kind": self.kind, "variant": self.variant, "model": self.model.to_dict(), "train": train, "data": data,
                "teacher": (self.teacher or {}).get("best_sha256")}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["mode"] = self.mode
        return {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "RunConfig":
        if d.get("format") != RUN_FORMAT:
            raise RunError(f"{where}: not a deccm run config (format {d.get('format')!r}). "
                           "Fix: point at a run dir written by `python -m deccm.train` (retrain runs of older deccm versions).")
        body = {k: v for k, v in d.items() if k not in ("format", "format_version", "mode")}
        try:
            body["model"] = ModelConfig.from_dict(body["model"])
            body["train"] = TrainConfig(**body["train"])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{where}: malformed run config ({e}). Fix: retrain the run.") from e


def run_dir_of(path: Path) -> Path:
    """The run dir for a run dir or a checkpoint file in one; a missing path names itself."""
    if not path.exists():
        raise RunError(f"{path}: no such run directory. Fix: pass a directory written by `python -m deccm.train` "
                       f"(runs live under {config.runs_dir()} by default).")
    return path if path.is_dir() else path.parent


def read_config(path: str | Path) -> RunConfig:
    """A run's config (from a run dir, or a checkpoint file in one) without loading any weights."""
    run = run_dir_of(Path(path))
    cfg = run / CONFIG
    if not cfg.is_file():
        raise RunError(f"{run}: no {CONFIG}, so this is not a deccm run dir. Fix: pass the directory written by "
                       "`python -m deccm.train`.")
    try:
        d = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{cfg}: not valid JSON ({e}). Fix: reopen the run with `python -m deccm.train ... --resume` "
                       f"(it rewrites {CONFIG} from {STATE}).") from e
    return RunConfig.from_dict(d, str(cfg))


def write_config(run: Path, conf: RunConfig) -> None:
    safeio.write_json(run / CONFIG, conf.to_dict())


def has_run(path: Path) -> bool:
    return (path / STATE).is_file() or (path / CONFIG).is_file()


# --------------------------------------------------------------------------- opening a run


@dataclass(frozen=True)
class Opened:
    """How a training opens its run dir (:func:`open_run`)."""

    run_dir: Path  # where the epochs are written: the run dir, or ``.NAME.overwrite`` beside it until a replacing run has one
    resuming: bool  # the stored run has these settings and is continued
    finished: bool  # ... and it has finished: there is nothing to do
    stored: RunConfig | None  # the run config found in the run dir


def refuse_to_replace(out: Path, overwrite: bool) -> None:
    """A run in ``out`` is replaced only with ``overwrite`` (checked before any slow work, and again when opening)."""
    if not overwrite and out.exists() and has_run(out):
        raise RunError(f"{out} already holds a run. Fix: --resume to continue it, --overwrite to replace it, or --out elsewhere.")


def stored_config(run: Path) -> RunConfig | None:
    """The run config recorded in a run's state (None when it has no state)."""
    if not (run / STATE).is_file():
        return None
    return RunConfig.from_dict(load_checkpoint(run / STATE)["run"], str(run / STATE))


def open_run(out: Path, conf: RunConfig, resume: bool | Literal["auto"], overwrite: bool, write: bool = True) -> Opened:
    """Open run dir ``out`` for a training whose run config is ``conf``.

    ``resume``: False starts a new run (one already there needs ``overwrite``); True continues the
    stored run; ``"auto"`` returns a finished run as it is, continues a partial one or starts afresh.
    A stored run with other settings is never resumed: with ``overwrite`` it is replaced, else
    refused. A replacing run writes beside the old one, which stays whole until the new run has
    finished an epoch (``safeio.replace_dir`` swaps it in). ``write``: this process writes the
    run dir (rank 0 under torchrun); the others only learn the answer.
    """
    if write:
        safeio.recover_dir(out)  # a writer killed between the two renames of a swap left the old run aside
    stored = stored_config(out)
    if resume is True and stored is None:
        raise RunError(f"{out}: nothing to resume (no {STATE}). Fix: drop --resume to start this run.")
    same = stored is not None and stored.settings() == conf.settings()
    if stored is not None and resume and not same and not overwrite:
        diff = sorted(k for k, v in conf.settings().items() if stored.settings()[k] != v)
        raise RunError(f"{out}: holds a run with other settings ({', '.join(diff)}); it is not resumed. "
                       "Fix: resume with the run's own settings, --overwrite to replace it, or --out elsewhere.")
    resuming = bool(resume) and same
    if resuming and stored is not None and stored.finished:
        if write:
            restore(out)  # the copies may lag a crash that came after the last epoch's record
        return Opened(out, resuming=True, finished=True, stored=stored)
    if not resuming:
        refuse_to_replace(out, overwrite)  # "auto" with no resumable run
    run_dir = out
    if not resuming and out.exists() and any(out.iterdir()):
        run_dir = out.with_name(f".{out.name}.overwrite")
        if write:
            shutil.rmtree(run_dir, ignore_errors=True)
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
    return Opened(run_dir, resuming=resuming, finished=False, stored=stored)


# --------------------------------------------------------------------------- state


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint, never unpickling anything but tensors and plain containers."""
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run has not finished an epoch yet. Fix: train it (or resume it) first.") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one clear message
        raise RunError(f"{path}: cannot be read as a deccm checkpoint ({type(e).__name__}: {e}). "
                       "Fix: resume the run to rewrite it, or retrain.") from e


def save_epoch(run: Path, conf: RunConfig, state: dict[str, Any], best_model: dict[str, torch.Tensor], improved: bool) -> None:
    """Record one finished epoch: ``state.pt`` (the atomic unit), then its copies ``best.pt`` and ``config.json``.

    ``state`` holds model, optimizer, rng and epoch; the run config with its history and
    best-so-far and the best weights go in beside them. A crash after ``state.pt`` leaves
    stale copies that :func:`restore` rewrites when the run is reopened.
    """
    with safeio.atomic_path(run / STATE) as tmp:
        torch.save({**state, "run": conf.to_dict(), "best_model": best_model}, tmp)
    if improved or not (run / BEST).is_file():
        with safeio.atomic_path(run / BEST) as tmp:
            torch.save({"model": best_model, "epoch": conf.best_epoch}, tmp)
    write_config(run, conf)


def restore(run: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, dict[str, Any]]:
    """The run config and state recorded in ``state.pt``, with the copies made to agree with them.

    Temp files a killed writer left behind are removed (the one process that trains a run
    is the only writer, and it is reopening the run now).
    """
    for tmp in run.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    state = load_checkpoint(run / STATE, device)
    conf = RunConfig.from_dict(state["run"], str(run / STATE))
    sync_copies(run, conf, state)
    return conf, state


def sync_copies(run: Path, conf: RunConfig, state: dict[str, Any]) -> None:
    """Rewrite ``best.pt`` and ``config.json`` from the state (a crash may have cut them off)."""
    best = run / BEST
    try:
        current = load_checkpoint(best, "cpu") if best.is_file() else None
    except RunError:
        current = None  # unreadable copy: rewrite it
    if current is None or current.get("epoch") != conf.best_epoch:
        with safeio.atomic_path(best) as tmp:
            torch.save({"model": state["best_model"], "epoch": conf.best_epoch}, tmp)
    try:
        on_disk = json.loads((run / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        on_disk = None
    if on_disk != json.loads(json.dumps(conf.to_dict())):
        write_config(run, conf)


# --------------------------------------------------------------------------- models


def build_model(kind: Kind, cfg: ModelConfig, prior_mean: np.ndarray | list[float] | None = None,
                teacher: CrossModalVAE | None = None) -> CrossModalVAE | DecCMStudent | RidgeMatcher:
    """A fresh model of ``kind``; the student's inference prior d̄ is ``prior_mean`` (uniform if None)."""
    if kind == "teacher":
        return CrossModalVAE(cfg)
    if cfg.arch == "ridge":
        return RidgeMatcher(cfg)
    prior = np.asarray(prior_mean if prior_mean is not None else np.full(cfg.n_genres, 1 / cfg.n_genres), dtype=np.float32)
    return DecCMStudent(cfg, teacher, torch.as_tensor(prior))


def load_for_inference(path: str | Path, device: torch.device | str = "cpu") -> tuple[CrossModalVAE | DecCMStudent | RidgeMatcher, RunConfig]:
    """Rebuild a trained model in eval mode from a run dir (its best epoch) or a ``best.pt``/``state.pt`` in one."""
    path = Path(path)
    run = run_dir_of(path)
    conf = read_config(run)
    ckpt = path if path.is_file() else run / BEST
    device = torch.device(device) if isinstance(device, str) else device
    teacher = CrossModalVAE(ModelConfig.from_dict(conf.teacher_model)) if conf.teacher_model else None
    model = build_model(conf.kind, conf.model, conf.prior_mean, teacher)
    state = load_checkpoint(ckpt, device)
    model.load_state_dict(state["best_model"] if ckpt.name == STATE else state["model"])
    return model.to(device).eval(), conf


# --------------------------------------------------------------------------- compatibility


def check_feature_specs(a: dict[str, Any] | None, b: dict[str, Any] | None, what_a: str, what_b: str) -> None:
    """Refuse to pair models and data whose features were extracted differently."""
    from deccm.features.spec import SpecMismatch, require_same

    for kind in ("video", "music"):
        sa, sb = (a or {}).get(kind), (b or {}).get(kind)
        if sa is None and sb is None:
            continue
        if sa is None or sb is None:
            raise RunError(f"{what_a} and {what_b}: only one side records a {kind} extractor spec. "
                           "Fix: use features extracted by deccm.features on both sides.")
        try:
            require_same(sa, sb, what_a, what_b)
        except SpecMismatch as e:
            raise RunError(f"{kind}: {e}") from None


def check_data(conf: RunConfig, ds: "Dataset", what: str) -> None:
    """A run can score ``ds``: same feature dims and extractor specs (other data only warns elsewhere)."""
    dims = ds.manifest["dims"]
    if (conf.model.video_dim, conf.model.music_dim) != (dims["video"], dims["music"]):
        raise RunError(f"{what}: trained on {conf.model.video_dim}/{conf.model.music_dim}-d features, {ds.root} has "
                       f"{dims['video']}/{dims['music']}. Fix: use data with the run's feature spec.")
    check_feature_specs(conf.data.get("features"), ds.manifest.get("features"), f"model {what}", f"data {ds.root}")


def check_teacher(teacher: RunConfig, where: Path, ds: "Dataset", cfg: ModelConfig) -> None:
    """The teacher a student distils from: a teacher, same dims, same features, same PGC data (fixes §9.4)."""
    if teacher.kind != "teacher":
        raise RunError(f"{where}: is a {teacher.kind} run, not a teacher. Fix: pass a run of `python -m deccm.train teacher`.")
    for key in ("video_dim", "music_dim", "latent_dim"):
        if getattr(teacher.model, key) != getattr(cfg, key):
            raise RunError(f"{where}: teacher {key}={getattr(teacher.model, key)} but the student needs {getattr(cfg, key)}. "
                           f"Fix: train the teacher on {ds.root} with the same latent size.")
    check_feature_specs(teacher.data.get("features"), ds.manifest.get("features"), f"teacher {where}", f"student data {ds.root}")
    same = (teacher.data.get("pgc_hash") == pgc_hash(ds) if teacher.data.get("pgc_hash")
            else teacher.data["manifest_hash"] == ds.manifest_hash)
    if not same:
        raise RunError(f"{where}: teacher was trained on data {teacher.data['name']} (manifest {teacher.data['manifest_hash'][:12]}) "
                       f"whose PGC part differs from that of the student's data {ds.manifest.get('name')} "
                       f"(manifest {ds.manifest_hash[:12]}). Fix: python -m deccm.train teacher --data {ds.root}")
    if not teacher.finished:
        raise RunError(f"{where}: the teacher has not finished training. Fix: resume it first "
                       f"(python -m deccm.train teacher --data {ds.root} --out {where} --resume).")


def pgc_hash(ds: "Dataset") -> str | None:
    """Identity of what a teacher learns from: the PGC arrays' sha256 and the extractor specs (None without PGC).

    New uploads change the dataset's manifest but not this, so a teacher stays valid for them.
    """
    files = ds.manifest.get("files", {})
    pgc = {k: v.get("sha256") for k, v in sorted(files.items()) if k.startswith("pgc/")}
    if not pgc:
        return None
    body = json.dumps({"pgc": pgc, "features": ds.manifest.get("features"), "dims": ds.manifest.get("dims")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def data_record(ds: "Dataset") -> dict[str, Any]:
    """What a run stores about its data."""
    return {**record_path(ds.root), "name": ds.manifest.get("name"), "manifest_hash": ds.manifest_hash, "pgc_hash": pgc_hash(ds),
            "provenance": ds.manifest.get("provenance"), "synthetic": ds.is_synthetic,
            "features": ds.manifest.get("features"), "confounder": confounder_record(ds)}


def confounder_record(ds: "Dataset") -> dict[str, Any]:
    """Whether the data carries the uploader-taste confounder: the manifest's word, else uploaders and genres present."""
    recorded = ds.manifest.get("confounder")
    if recorded is not None:
        return recorded
    available = ds.ugc.train.uploader is not None and ds.n_genres > 1
    return {"available": available, "reason": "uploaders and genres present" if available else
            "no uploader ids or a single genre group in the training rows"}


def code_version() -> str:
    """The package version, plus the git commit when run from a checkout (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("deccm")
    except PackageNotFoundError:
        v = "unknown"
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return f"{v}+g{ref[:12]}"
    except OSError:
        return v
