"""Model configuration: the paper's hyper-parameters and the named fixed-mode switches.

``faithful`` reproduces the authors' computations, bugs included (``docs/method.md`` §9);
``fixed`` (the default) turns on each correction below. Every switch is one field so a
measurement can attribute a change to it (see ``docs/results.md``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Mode = Literal["faithful", "fixed"]

# the switches and their value in each mode
MODE_SWITCHES: dict[str, dict[str, Any]] = {
    "faithful": {"hinge": "faithful", "distill": "faithful", "mask_same_track": False,
                 "confounder": "batch-mean", "fusion": "linear"},
    "fixed": {"hinge": "max-margin", "distill": "gaussian", "mask_same_track": True,
              "confounder": "per-sample", "fusion": "interaction"},
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss settings (§3–§5); dims are filled from the dataset."""

    video_dim: int = 2048
    music_dim: int = 256
    latent_dim: int = 128
    n_genres: int = 6
    dropout: float = 0.2
    margin: float = 0.05
    top_k: int = 40
    music_factor: float = 1.0
    rec_weight: float = 1.0
    unit_logvar: bool = True  # §9.12, kept in both modes
    mode: Mode = "fixed"
    # --- the fixed-mode switches (set from MODE_SWITCHES unless overridden) ---
    hinge: Literal["faithful", "max-margin"] = "max-margin"  # §9.1
    distill: Literal["faithful", "gaussian", "off"] = "gaussian"  # §9.2
    distill_weight: float = 1.0  # α; the authors use 5e-5 with their (wrong) KL
    mask_same_track: bool = True  # in-batch "negatives" sharing the positive's track are not negatives
    confounder: Literal["batch-mean", "per-sample", "none"] = "per-sample"  # §9.3
    fusion: Literal["linear", "interaction"] = "interaction"  # §9.3: a linear g cancels in ranking
    ips: bool = False  # weight rows by 1/propensity (§5.4, unused by the authors)
    adversary: float = 0.0  # weight of a gradient-reversed head that predicts the uploader's taste from μ_v (0 = none)
    erase_taste: bool = False  # erase the uploader prior's linear information from the video vectors (deccm.models.erasure)
    erase_residual: bool = False  # with erase_taste: erase only the taste that the video's content (as PGC reads it) does not explain
    ridge_blend: float = 0.0  # > 0: a closed-form ridge map rides along; scores add its cosine times this weight
    ridge_erase_all: bool = False  # with ridge_blend and erase_taste: the ridge part erases all of the taste, not only the part beyond content
    balance_blocks: bool = False  # each feature block (e.g. CNN frames vs motion) gets equal weight at the encoders' input
    arch: Literal["vae", "ridge"] = "vae"  # ridge: the closed-form linear baseline (deccm.models.ridge), no VAE

    @classmethod
    def for_mode(cls, mode: Mode, **overrides: Any) -> "ModelConfig":
        base = dict(MODE_SWITCHES[mode])
        base["distill_weight"] = 5e-5 if mode == "faithful" else 1.0
        base.update(overrides)
        return cls(mode=mode, **base)

    def replace(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
