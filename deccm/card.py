"""The model card: what a person needs to judge a model, as a dict and in words.

:func:`model_card` builds the card (a dict recorded with every registered version, its
``trained_on.kind`` saying what the data is); :func:`card_markdown` renders it as the
markdown a person reads in the demo and as the registered version's description, calling
SYNTHETIC and GENERATED training data out loudly (docs/architecture.md, "The registry and
the gate").
"""
from __future__ import annotations

from typing import Any

from deccm import tracking
from deccm.metrics import METRICS
from deccm.models import ModelConfig
from deccm.moments import DESCRIPTORS
from deccm.serve import Recommender

MODEL_NAME = "deccm-student"  # the registered model's name (deccm.registry.MODEL_NAME)


def model_card(rec: Recommender, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a person needs to judge the model: data and provenance, extractors, figures, confounder handling."""
    conf = rec.run
    confounder = conf.data.get("confounder") or {}
    ext = tracking.extractor_summary(conf)
    return {
        "model": MODEL_NAME, "run": conf.name, "kind": conf.kind, "variant": conf.variant, "mode": conf.mode,
        "trained_on": {
            "dataset": conf.data.get("name"), "manifest_hash": conf.data.get("manifest_hash"),
            "provenance": tracking.provenance(conf), "synthetic": conf.synthetic, "kind": tracking.data_kind(conf),
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
            "handling": _taste_handling(conf.model, conf.blend),
        },
        "evaluation": evaluation or {},
        "catalog": {"tracks": len(rec.catalog.tracks), "genres": rec.catalog.genres, "genre_mix": rec.catalog.genre_mix(),
                    "licences": rec.catalog.licence_counts()},
        "moments": _moments_card(rec),
    }


def _moments_card(rec: Recommender) -> dict[str, Any] | None:
    """The window spec and how well the projection reads the model's track vectors from the descriptors (None: no audio)."""
    m = rec.catalog.moments
    if m is None:
        return None
    return {"window_spec": m.spec.to_dict(), "tracks_analysed": sum(a is not None for a in m.analyses),
            "tracks_with_beat": sum(a is not None and a.has_beat for a in m.analyses),
            "projection_r2": round(m.projection.r2, 3), "projection_degree": m.projection.degree,
            "projection_descriptors": list(DESCRIPTORS[: m.projection.columns]),
            "projection_loo_r2": None if m.projection.loo_r2 is None else round(m.projection.loo_r2, 3),
            "rule": "docs/method.md §11 (Moments)"}


def _taste_handling(model: ModelConfig, blend: dict[str, Any] | None = None) -> str:
    """What the model does about the uploader's genre taste, in words for the model card."""
    if model.ridge_blend > 0:
        a, b = blend["weights"] if blend else (1.0, model.ridge_blend)
        how = f", chosen on {blend['chosen_on']}" if blend else ""
        erasure = "all of the taste erased" if model.ridge_erase_all and model.erase_taste else "the same erasure"
        return (_taste_handling(model.replace(ridge_blend=0.0)) + f"; a closed-form ridge map with {erasure} rides "
                f"along, and each score is {a:g} × the student's cosine + {b:g} × the ridge cosine{how}")
    if model.erase_taste and model.erase_residual:
        return ("erased beyond content: only the part of the uploader's genre taste that the video's content (the "
                "directions that predict the music's genre on PGC pairs) does not explain is linearly removed from the video "
                "vectors (LEACE), so taste that is real content stays")
    if model.erase_taste:
        return ("erased: the uploader's genre taste is linearly removed from the video vectors (LEACE, fitted on the "
                "training rows' uploader priors), so scores cannot follow it")
    if model.adversary > 0:
        return "adversary: the video encoder is trained against a head that reads the uploader's taste (gradient reversal)"
    return {"none": "not modelled: content-only matching (the uploader's genre taste is left out of scoring)",
            "per-sample": "backdoor adjustment: training conditions on each row's uploader prior; scores average it out",
            "batch-mean": "the authors' batch-mean prior (faithful mode)"}[model.confounder]


def data_kind(card: dict[str, Any]) -> str:
    """The card's ``trained_on.kind`` (:func:`deccm.tracking.data_kind`); a card from before the field says it in
    its dataset name and provenance."""
    trained = card.get("trained_on") or {}
    if trained.get("kind"):
        return str(trained["kind"])
    dataset, provenance = str(trained.get("dataset", "")), str(trained.get("provenance", ""))
    if trained.get("synthetic"):
        return "synthetic"
    if dataset.startswith("recorded-corpus") or provenance.startswith("recorded corpus"):
        return "recorded"
    if dataset.startswith("demo-corpus") or "generated" in provenance.lower():
        return "generated"
    return "real"


def data_warning(card: dict[str, Any]) -> str:
    """One loud line when the model was trained on synthetic features or generated media; '' otherwise."""
    kind = data_kind(card)
    if kind == "synthetic":
        return ("**⚠ SYNTHETIC DATA.** This model was trained on SYNTHETIC feature vectors: it never saw a video or heard "
                "a track. Its rankings show the method, not real musical taste.")
    if kind == "recorded":
        return ("**⚠ GENERATED CLIPS AND PICKS.** This model was trained on the recorded corpus: REAL recordings (30 s "
                "excerpts of Debian's free game soundtracks, each with its licence), but clips drawn by ffmpeg and uploads "
                "and picks simulated from a planted relation between the clips' looks and the tracks' measured tempo, "
                "mode, energy and brightness. Its rankings show the method on real music, not real taste.")
    if kind == "generated":
        return ("**⚠ GENERATED DATA.** This model was trained on the demo corpus, which is GENERATED: music rendered from "
                "public-domain scores and clips drawn by ffmpeg, with a planted relation between them. Its rankings show "
                "the method on generated media, not real taste.")
    return ""


CARD_GROUPS = (("Ranking", "ranking"), ("Bias (popularity and genre calibration)", "bias"))  # the card's tables, in order


def _fmt(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:g}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.4f}"
    return "—" if v is None else str(v)


def _evaluation_md(evaluation: dict[str, Any]) -> list[str]:
    figures = evaluation.get("challenger") if isinstance(evaluation.get("challenger"), dict) else None
    if figures is None:  # a bare {split: {metric: value}} evaluation
        figures = {k: v for k, v in evaluation.items() if isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())}
    figures = {s: v for s, v in (figures or {}).items() if isinstance(v, dict) and v}
    if not figures:
        return ["No evaluation figures were recorded with this version (it was registered without an evaluation)."]
    splits = list(figures)
    out = []
    for title, group in CARD_GROUPS:  # the metrics, their order and their words: deccm.metrics.METRICS
        rows = [m.name for m in METRICS.values() if m.card and m.group == group and any(m.name in figures[s] for s in splits)]
        if not rows:
            continue
        out += [f"**{title}**", "", "| metric | " + " | ".join(splits) + " | what it measures |",
                "|---|" + "---:|" * len(splits) + "---|"]
        out += [f"| {m} | " + " | ".join(_fmt(figures[s].get(m)) for s in splits) + f" | {METRICS[m].words} |" for m in rows]
        out.append("")
    if "test_oracle" in splits:
        out.append("`test_oracle` re-draws the test clips' tracks from the planted relation alone, without the uploaders' "
                   "genre taste: it measures what the model learnt about the media, not the logged bias.")
    champ = evaluation.get("champion")
    if evaluation.get("comparable") and isinstance(champ, dict):
        split = "val" if "val" in champ else next(iter(champ), None)
        if split and "HR_w@10" in champ[split]:
            out.append(f"When this version was registered, the champion then (v{evaluation.get('champion_version')}) scored "
                       f"HR_w@10 {_fmt(champ[split]['HR_w@10'])} on the same {split} split.")
    return out


LICENCES_SHOWN = 5  # licences named on the card, most common first (card.json has them all)


def _moment_rows(moments: dict[str, Any] | None) -> list[tuple[str, str]]:
    """How the card's model places each track under a clip (docs/method.md §11), or that it plays tracks from the start."""
    if not moments:
        return [("moments", "none: tracks play from their start (no catalog audio, or registered before moments)")]
    w = moments["window_spec"]
    return [("moments", f"a window at the clip's length every {w['hop_s']:g} s, chosen by the model "
                        f"({w.get('choice', 'argmax')}) through a projection of "
                        f"{len(moments.get('projection_descriptors', range(5)))} descriptors, degree "
                        f"{moments.get('projection_degree', 1)} (R² {moments['projection_r2']:.2f}); cut on the {w['snap']} "
                        f"({moments['tracks_with_beat']} of {moments['tracks_analysed']} tracks have a beat), "
                        f"{w['fade_out_s']:g} s fade-out, short tracks loop; window spec {w['spec_id']}")]


def _licence_rows(counts: dict[str, dict[str, int]] | None) -> list[tuple[str, str]]:
    """The catalog's tracks per licence family and per licence, for the card's table."""
    if not counts:
        return [("catalog licences", "not recorded (registered before licences were carried)")]
    families = ", ".join(f"{f} {n}" for f, n in counts["families"].items() if n)
    unknown = counts["families"].get("unknown", 0)
    names = list(counts["licences"].items())
    shown = ", ".join(f"{name if len(name) <= 60 else name[:59] + '…'}: {n}" for name, n in names[:LICENCES_SHOWN])
    more = f", and {len(names) - LICENCES_SHOWN} more" if len(names) > LICENCES_SHOWN else ""
    return [("catalog licence families", families + (f" ({unknown} of unknown licence: never served by default)" if unknown else "")),
            ("catalog licences", shown + more)]


def card_markdown(card: dict[str, Any]) -> str:
    """The model card for a person: data (synthetic / generated / real), extractors, figures incl. bias, confounder, version."""
    if not card:
        return "No model card: this model was not served from the registry."
    reg = card.get("registry") or {}
    trained = card.get("trained_on") or {}
    training = card.get("training") or {}
    confounder = card.get("confounder") or {}
    pretrained = card.get("pretrained_extractors") or {}
    extractors = card.get("extractors") or {}
    catalog = card.get("catalog") or {}
    version = f"version {reg['version']}" if reg.get("version") else "not registered"
    aliases = f" (alias {', '.join(reg['aliases'])})" if reg.get("aliases") else ""
    lines = [f"### Model card: {reg.get('name', card.get('model', 'deccm-student'))} {version}{aliases}", ""]
    warning = data_warning(card)
    if warning:
        lines += [f"> {warning}", ""]
    if trained.get("synthetic"):
        data_kind = "SYNTHETIC features (no media)"
    elif warning.startswith("**⚠ GENERATED CLIPS"):
        data_kind = "real recordings with GENERATED clips and picks (the recorded corpus)"
    elif warning:
        data_kind = "GENERATED media (the demo corpus)"
    else:
        data_kind = "real media: features extracted from the user's clips and tracks"

    def extractor(kind: str) -> str:
        desc = extractors.get(kind, "—")
        if kind not in pretrained:
            return desc
        return f"{desc}: {'pretrained weights' if pretrained[kind] else 'NOT pretrained (random weights)'}"

    best_val = training.get("best_val")
    previous = reg.get("previous_champion")
    in_data = {True: "yes", False: "no", None: "not recorded"}.get(confounder.get("uploader_taste_in_data"), "—")
    rows = [
        ("registry", f"{reg.get('name', 'deccm-student')} {version}{aliases}"
         + (f"; previous champion: v{previous}" if previous not in (None, "", "none") else "")),
        ("run", f"{card.get('run', '—')} ({card.get('kind', '')}, variant {card.get('variant', '—')}, mode {card.get('mode', '—')})"),
        ("trained on", f"{data_kind}; dataset `{trained.get('dataset', '—')}` "
                       f"(manifest {str(trained.get('manifest_hash') or '—')[:12]}), provenance: {trained.get('provenance', '—')}"),
        ("about the data", trained.get("note", "—")),
        ("video extractor", extractor("video")),
        ("music extractor", extractor("music")),
        ("training", f"{training.get('epochs', '—')} epochs, best epoch {training.get('best_epoch', '—')}"
                     + (f" (validation {_fmt(best_val)})" if best_val is not None else "")
                     + (f", distilled from teacher {training['teacher']}" if training.get("teacher") else ", no teacher")
                     + (f", code {training['code_version']}" if training.get("code_version") else "")),
        ("confounder (uploader genre taste)", f"{confounder.get('handling', '—')}; in the data: {in_data}"),
        ("catalog", f"{catalog.get('tracks', '—')} tracks in {len(catalog.get('genres') or [])} genres"),
        *_licence_rows(catalog.get("licences")),
        *_moment_rows(card.get("moments")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows] + ["", "#### Evaluation", ""]
    lines += _evaluation_md(card.get("evaluation") or {})
    return "\n".join(lines).rstrip() + "\n"
