"""The promotion gate: may a challenger replace the champion? (docs/method.md §7, "The promotion gate").

Both models are scored on the same rows of a held-out split (``gate``, clips that no
early stopping saw; ``val`` only for datasets older than that split, with a warning in
the reasons). The decision rests on a paired bootstrap over clips of the per-row
difference challenger − champion, not on two point estimates:

- promote only when the one-sided lower 95 % bound of the difference (its bootstrap
  5th percentile) clears ``margin``, the
  challenger's value clears ``floor``, and the bias guard holds (no bias metric worse
  than the champion's by more than ``bias_tolerance``, in the metric's own direction
  from ``deccm.metrics.METRICS``);
- where the split has uploaders and priors (logged, confounded choices), the deciding
  estimate is self-normalised IPS: each row's metric weight times its taste-free weight
  (``deccm.propensity``: the clip's content genre mix over the uploader's taste, fitted on
  PGC and the logs; the uploader prior 1/e_i where that cannot be fitted), which estimates
  the score under choices free of the uploader's taste; the plain estimate and both models'
  taste probes are recorded beside it. There the bias guard's ``genre_KL@10`` is measured
  against the same taste-free estimate of the genre mix (positives weighted alike), not
  against the logged mix, which carries the taste.

:class:`GateConfig` validates its own bounds, so settings from any caller (DAG params,
an asset event, a test) are checked in one place; its numeric bounds and the metrics and splits it
accepts are those ``deccm.settings.Pipeline`` declares, so the DAG's Params offer exactly these.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deccm import metrics, propensity, settings
from deccm.data import Dataset, protocol
from deccm.evaluate import SplitResult, evaluate_split, split_rows, taste_probe
from deccm.serve import Ranker
from deccm.settings import GATE_METRICS, GATE_SPLITS, SettingsError

log = logging.getLogger(__name__)

SPLITS = GATE_SPLITS  # the splits a gate may score on; test and test_oracle judge models, never choose them
FALLBACK_SPLIT = "val"  # for datasets made before the gate split existed
BIAS_METRICS = ("genre_KL@10", "top_genre_share@10")
ESS_RATIO = 0.5  # content-aware weights whose effective share of rows is under this × the prior's are not used


@dataclass(frozen=True)
class GateConfig:
    """When a challenger may replace the champion; every bound is checked on construction."""

    metric: str = "HR@10"  # one of GATE_METRICS (higher is better, per-row, in [0, 1])
    split: str = "gate"  # one of SPLITS
    margin: float = 0.005  # the one-sided lower 95 % bound of challenger − champion must exceed this
    floor: float = 0.15  # absolute floor of the challenger's metric (chance HR@10 is 10/101 = 0.099)
    bias_tolerance: float = 0.05  # a bias metric may be worse than the champion's by at most this
    n_boot: int = 2000  # bootstrap resamples of the paired difference
    seed: int = 0  # bootstrap seed: the same inputs give the same decision

    def __post_init__(self) -> None:
        m = metrics.metric(self.metric)
        if self.metric not in GATE_METRICS:
            why = ("lower is better" if m.direction < 0 else "it describes the data" if m.direction == 0
                   else "it has no per-row values to compare clip by clip" if not m.per_row else "it is unbounded")
            raise ValueError(f"gate_metric {self.metric!r} cannot decide a promotion: {why}. Fix: use one of {list(GATE_METRICS)}")
        if self.split not in SPLITS:
            raise ValueError(f"gate_split {self.split!r} is not allowed: the gate scores on one of {list(SPLITS)} "
                             "(test and test_oracle judge the final model and must never choose it). Fix: gate_split=gate")
        for name, value in (("gate_margin", self.margin), ("gate_floor", self.floor), ("bias_tolerance", self.bias_tolerance)):
            if isinstance(value, str):  # the pipeline converts text; a GateConfig is built from numbers
                raise SettingsError(f"gate setting {name}={value!r} must be a number")
            settings.spec(settings.Pipeline, name).convert(value)  # the bounds the pipeline's settings declare
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 200:
            raise ValueError(f"gate n_boot={self.n_boot!r}: at least 200 resamples are needed for a 95 % bound. Fix: e.g. 2000")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"gate seed={self.seed!r} must be an integer")


# --------------------------------------------------------------------------- statistics


def inverse_propensities(ds: Dataset, split: str) -> np.ndarray | None:
    """Per-row factors 1 / e_i of self-normalised IPS, e_i the logged propensity; None without uploaders.

    The metric's own row weight (inverse popularity for the ``_w`` metrics, 1 otherwise)
    multiplies it, so the estimate is of the same metric under choices free of the taste.
    e_i = clip(prior_i[genre(m_i)], 0.01, 1) (``deccm.data.protocol.propensities``): how
    likely the uploader's taste made this row's pick, the same quantity training's IPS uses.
    """
    rows = split_rows(ds, split)
    if rows.uploader is None or rows.prior is None or ds.ugc.music_genre is None:
        return None
    genre = ds.ugc.music_genre[rows.music]
    if (genre < 0).any():
        return None
    e = protocol.propensities(np.asarray(rows.prior), genre).astype(np.float64)
    return 1.0 / e


def paired(challenger: np.ndarray, champion: np.ndarray, weights: np.ndarray | None, clips: np.ndarray,
           n_boot: int, seed: int) -> dict[str, Any]:
    """Weighted means of both and of their per-row difference, with bootstrap bounds over clips.

    ``ci95`` is the two-sided 95 % interval (reported); ``lower95`` the one-sided lower 95 %
    bound, the 5th percentile of the same resamples, which decides: the question is one-sided
    (is the challenger better?), and the two-sided interval's lower end would be a 97.5 % bound.
    """
    a, b = np.asarray(challenger, np.float64), np.asarray(champion, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the models were scored on different rows ({a.shape} vs {b.shape}): a paired comparison needs the same rows")
    w = np.ones_like(a) if weights is None else np.asarray(weights, np.float64)
    d = a - b
    lo, hi = metrics.bootstrap_ci(d, w, n_boot=n_boot, seed=seed, groups=clips)
    lower, _ = metrics.bootstrap_ci(d, w, n_boot=n_boot, seed=seed, groups=clips, level=0.90)  # the same resamples
    return {"challenger": float(w @ a / w.sum()), "champion": float(w @ b / w.sum()), "diff": float(w @ d / w.sum()),
            "ci95": [lo, hi], "lower95": lower, "clips": int(len(np.unique(clips))), "rows": int(len(d))}


def taste_free_weights(ds: Dataset, split: str) -> tuple[np.ndarray | None, str]:
    """Per-row factors of the self-normalised IPS that makes logged rows taste-free, and how they were made.

    The content-aware model (``deccm.propensity``: the clip's content genre mix from PGC and
    the uploader's taste) where the data has its parts, else the uploader prior alone
    (:func:`inverse_propensities`); (None, "") where the rows have no uploaders. The prior
    also stands in when the content-aware weights concentrate on a few rows: an effective
    share of rows (Kish) under ``ESS_RATIO`` times the prior's. On the demo corpus, with 180
    PGC pairs, the genre model is sure enough to leave 2 % (the prior: 19 %); on the
    synthetic worlds the ratio is 0.65–1.7 (docs/results.md, "The gate").
    """
    inv = inverse_propensities(ds, split)
    if inv is None:
        return None, ""
    model = propensity.fit(ds)
    if model is None:
        return inv, "uploader prior 1/e_i (no PGC pairs, or no uploaders on val, for the content-aware propensities)"
    w = model.weights(ds, split_rows(ds, split))
    mine, prior = propensity.effective_share(w), propensity.effective_share(inv)
    if mine < ESS_RATIO * prior:  # a few clips would decide: the content model is too sure of itself here
        return inv, (f"uploader prior 1/e_i (the content-aware weights leave an effective {mine:.0%} of the rows, "
                     f"under {ESS_RATIO:g} × the prior's {prior:.0%}: {model.describe()})")
    return w, model.describe()


def compare(ds: Dataset, split: str, challenger: SplitResult, champion: SplitResult, cfg: GateConfig,
            taste_free: tuple[np.ndarray | None, str] | None = None) -> dict[str, Any]:
    """The paired comparison the gate decides on: plain and (where the split has uploaders) SNIPS estimates.

    ``taste_free`` is :func:`taste_free_weights` of the split (computed when not given)."""
    v_a, w = challenger.per_row[cfg.metric]
    v_b, _ = champion.per_row[cfg.metric]
    clips = np.asarray(split_rows(ds, split).video)
    out: dict[str, Any] = {"metric": cfg.metric, "split": split, "plain": paired(v_a, v_b, w, clips, cfg.n_boot, cfg.seed)}
    inv, how = taste_free if taste_free is not None else taste_free_weights(ds, split)
    if inv is not None:
        out["snips"] = paired(v_a, v_b, inv if w is None else np.asarray(w, np.float64) * inv, clips, cfg.n_boot, cfg.seed)
        out["propensities"] = how
    out["deciding"] = "snips" if "snips" in out else "plain"
    return out


def score(ds: Dataset, split: str, challenger: Ranker, champion: Ranker | None, cfg: GateConfig,
          taste_free: tuple[np.ndarray | None, str] | None = None) -> dict[str, Any]:
    """Both models on ``split``: point values, the paired comparison and the taste probes (JSON-able).

    The challenger alone (``champion`` None) gets its own estimates, so the floor reads the
    same estimator a comparison would. ``taste_free`` is :func:`taste_free_weights` of the
    split (fitted here when not given; a caller scoring several pairs on one split fits once).
    """
    res_a = evaluate_split(challenger, ds, split)
    taste_free = taste_free if taste_free is not None else taste_free_weights(ds, split)
    mix = _taste_free_genre_mix(ds, split, taste_free[0])
    out: dict[str, Any] = {"split": split, "challenger": _values(res_a, ds, mix), "champion": None}
    probe = ds.ugc.train.uploader is not None or ds.truth is not None
    if champion is None:  # the difference is 0; the challenger's estimates count
        out["comparison"] = compare(ds, split, res_a, res_a, cfg, taste_free)
    else:
        res_b = evaluate_split(champion, ds, split)
        out["champion"] = _values(res_b, ds, mix)
        out["comparison"] = compare(ds, split, res_a, res_b, cfg, taste_free)
    if probe:
        out["taste_R2"] = {"challenger": taste_probe(challenger, ds, split)}
        if champion is not None:
            out["taste_R2"]["champion"] = taste_probe(champion, ds, split)
    return out


def _taste_free_genre_mix(ds: Dataset, split: str, inv: np.ndarray | None) -> np.ndarray | None:
    """(1, G) genre mix of the split's positives, each weighted by its taste-free weight ``inv`` like the deciding
    SNIPS; None without such weights or genres.

    Logged positives carry the uploaders' taste: against their plain mix the model that learned the taste looks
    calibrated. This is the mix those choices would have without the taste, the bias guard's reference for genre_KL.
    """
    if inv is None or ds.ugc.music_genre is None:  # without genres there is no genre_KL to measure against it
        return None
    return np.bincount(ds.ugc.music_genre[split_rows(ds, split).music], weights=inv, minlength=ds.n_genres)[None, :]


def _values(res: SplitResult, ds: Dataset, mix: np.ndarray | None) -> dict[str, float]:
    """Point values; with a taste-free ``mix``, ``genre_KL@10`` is measured against it (the logged-mix value is kept
    as ``genre_KL@10_logged``)."""
    out = {k: float(v) for k, v in res.values.items()}
    kl = "genre_KL@10"
    if mix is not None and kl in out and res.top is not None:
        out[f"{kl}_logged"] = out[kl]
        out[kl] = metrics.calibration_kl(mix, ds.ugc.music_genre[res.top[:, :10]].reshape(1, -1), ds.n_genres)
    return out


# --------------------------------------------------------------------------- the decision


def decide(scored: dict[str, Any], cfg: GateConfig = GateConfig(), notes: tuple[str, ...] = ()) -> dict[str, Any]:
    """Promote or not, with every reason and number. ``scored`` is :func:`score`'s result.

    Without a champion (``scored["champion"]`` None: the first model, or one that cannot
    score this data) only the floor decides. ``notes`` (e.g. the fallback to ``val``) lead
    the reasons.
    """
    comp = scored["comparison"]
    if comp["metric"] != cfg.metric:
        raise ValueError(f"the comparison is of {comp['metric']}, the gate decides on {cfg.metric}. Fix: score with the same GateConfig")
    est = comp[comp["deciding"]]
    label = "self-normalised IPS" if comp["deciding"] == "snips" else "plain"
    reasons = list(notes)
    reasons.append(f"split {comp['split']}, {est['rows']} rows on {est['clips']} clips; deciding estimate: {label}"
                   + (f" (the split has uploaders: the logged choices carry their taste), weights from {comp['propensities']}"
                      if comp["deciding"] == "snips" else ""))
    ok = True
    value = est["challenger"]
    if not math.isfinite(value):
        raise ValueError(f"the challenger has no finite {cfg.metric} on {comp['split']}")
    if value < cfg.floor:
        ok = False
        reasons.append(f"{cfg.metric} {value:.4f} is below the floor {cfg.floor:.4f}")
    else:
        reasons.append(f"{cfg.metric} {value:.4f} clears the floor {cfg.floor:.4f}")
    champion = scored.get("champion")
    if champion is None:
        reasons.append("no comparable champion: the floor decides")
    else:
        lo, hi = est["ci95"]
        text = (f"{cfg.metric} challenger − champion = {est['diff']:+.4f}, 95 % interval [{lo:+.4f}, {hi:+.4f}], "
                f"one-sided lower 95 % bound {est['lower95']:+.4f} "
                f"(paired bootstrap over clips, {cfg.n_boot} resamples, seed {cfg.seed})")
        if est["lower95"] > cfg.margin:
            reasons.append(f"{text}: the lower bound clears the margin {cfg.margin}")
        else:
            ok = False
            reasons.append(f"{text}: the lower bound does not clear the margin {cfg.margin}, so it does not beat the champion")
        if comp["deciding"] == "snips":
            p = comp["plain"]
            reasons.append(f"plain estimate (not deciding): {p['diff']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]")
        for m in BIAS_METRICS:
            a, b = scored["challenger"].get(m), champion.get(m)
            if a is None or b is None:
                continue
            ref = " (against the taste-free genre mix, positives weighted like the SNIPS)" if f"{m}_logged" in champion else ""
            if metrics.worse_by(m, a, b) > cfg.bias_tolerance:
                ok = False
                reasons.append(f"bias guard: {m}{ref} {a:.4f} is worse than the champion's {b:.4f} by more than {cfg.bias_tolerance}")
            else:
                reasons.append(f"bias guard: {m}{ref} {a:.4f} vs champion {b:.4f} holds")
    probe = scored.get("taste_R2")
    if probe:
        reasons.append("taste probe R² (recorded, not deciding): " + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()))
    return {"promote": ok, "reasons": reasons, "gate": asdict(cfg), "comparison": comp, "taste_R2": probe,
            "challenger": scored["challenger"], "champion": champion}
