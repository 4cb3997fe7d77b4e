"""Moments with known truth: does the model's moment land on the section the planted relation picks?

Setting (docs/results.md, "Moments"): the champion that ``make demo DEMO_SOURCE=demo`` registers
(the demo corpus, built and trained under ``$DECCM_HOME`` when missing), served as the demo
serves it (``deccm.registry.load_champion``: the bundle with its moments). Fresh tracks the
model never saw are rendered with the corpus's own renderer (another seed); each *sectioned
track* joins three of them, 10 s each, so its sections differ in tempo, energy, mode and texture.
Each test clip of the corpus gets one sectioned track; its logged moment is drawn from the
planted relation between the clip's true look and each section's measured properties:
p(section) ∝ exp(β · a(v, q_section)), β and a as the corpus draws its picks. The clip's
moment length is 10 s (a section).

Measured, with 95 % bootstrap intervals over clips:
  * moment recall: IoU of the chosen 10 s window with the drawn section ≥ 0.5, for the model's
    moment (window + snap), the track start, a random offset (its exact expectation), and the
    oracle (the section with the highest planted affinity: the ceiling under the draw's noise);
    and the model's and the random offset's recall in expectation over the draw (Σ p(section) · [IoU ≥ 0.5]), which
    has no draw noise;
  * beat alignment: share of cut points (start, loop ends) within ±50 ms of a beat that
    librosa's tracker finds when run afresh on the track's audio (``librosa.beat.beat_track``
    on the samples), over tracks where a beat is found: the sectioned tracks, and the catalog's
    own tracks under a 10 s clip (most of them loop);
  * length error of every rendered moment (samples), and of every preview (the mux the demo's
    download gives) for every top-10 suggestion of a few real clip files, in video frames;
  * the rank rule: HR@10 on val and test_oracle of ranking by the model's track score against
    ranking by each track's best window (6 s windows), so the rule is chosen on val;
  * the full answer for a 10 s clip (``DemoService.respond`` with k = 10, then the preview of the
    top track), p50 and p90 over distinct clips, on this machine.

``--source recorded`` does the same on the recorded catalog's champion (``make demo``'s), with
real music the model never heard: each sectioned track joins 10 s sections of three recordings
of three different soundtracks, each cut from outside the 30 s excerpt the catalog holds,
measured as the excerpts are and placed against the catalog's descriptor percentiles (the
planted relation ``relation.RECORDED_MAP`` reads them).

Usage: python benchmarks/moments.py [--source demo|recorded] [--seed 0] [--sectioned 120] [--answers 12]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deccm import config, demo, moments, pipeline, registry
from deccm.data import load_dataset
from deccm.data.corpus import build, music, relation
from deccm.metrics import hit_rate, positive_rank

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SECTION_S = 10.0
BEAT_TOL_S = 0.05


def interval(hits: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    """Mean and its 95 % bootstrap interval."""
    x = np.asarray(hits, np.float64)
    boots = x[rng.integers(0, len(x), (n, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def iou(a0: float, b0: float, length: float) -> float:
    inter = max(0.0, min(a0, b0) + length - max(a0, b0))
    return inter / (2 * length - inter)


def random_offset_recall(true_start: float, duration: float, length: float, grid: int = 4001) -> float:
    """P(IoU ≥ 0.5) for a start uniform on [0, duration − length]: the random-offset baseline, exactly (a fine grid)."""
    starts = np.linspace(0.0, duration - length, grid)
    return float(np.mean([iou(s, true_start, length) >= 0.5 for s in starts]))


def fresh_tracks(cfg: build.CorpusConfig, out: Path, n: int, seed: int) -> list[music.Track]:
    """``n`` tracks of the demo corpus's genres rendered with another seed, each ``SECTION_S`` s (never in the catalog)."""
    quotas = {g: max(1, round(n * q / sum(cfg.quotas.values()))) for g, q in cfg.quotas.items()}
    small = replace(cfg, quotas=quotas, track_seconds=(SECTION_S, SECTION_S), seed=seed)
    return build.render_catalog(small, out, workers=2)


def unheard_sections(ds: Any, rng: np.random.Generator, per_recording: int = 1) -> tuple[list[np.ndarray], np.ndarray,
                                                                                          list[str]]:
    """A ``SECTION_S`` s section of each catalog recording, taken outside the excerpt the model was trained and served on
    (before it when there is room, else after), measured like the excerpts and placed against the catalog's own
    descriptor distribution: (samples, music vectors (n, 4) as ``relation.RECORDED_MAP`` reads them, packages)."""
    from deccm.data.corpus import recorded

    meta = ds.manifest["corpus"]["tracks"]
    ref = {k: np.asarray(meta[k], np.float64) for k in ("tempo_bpm", "mode_strength", "onsets_per_s", "rms_db", "centroid_hz")}
    audio, props, packages = [], [], []
    for row in ds.tracks:
        t = int(row["id"])
        path = Path(row.get("source", "").split(": ", 1)[-1])
        start, dur = float(meta["start_s"][t]), float(meta["duration_s"][t])
        spans = [s for s in (start - SECTION_S - 1.0, start + float(meta["excerpt_s"][t]) + 1.0)
                 if s >= 1.0 and s + SECTION_S <= dur - 1.0]
        if not path.is_file() or not spans:
            continue  # a .pk3 member, or a recording with no unheard 10 s
        y = recorded.decode(path, float(spans[int(rng.integers(len(spans)))]), SECTION_S)
        y = np.pad(y, (0, max(0, int(SECTION_S * recorded.SAMPLE_RATE) - len(y))))[: int(SECTION_S * recorded.SAMPLE_RATE)]
        m = recorded.measure(y)
        audio.append(y)
        props.append(m)
        packages.append(meta["package"][t])
    def place(key: str) -> np.ndarray:  # each value's percentile in the catalog, in [-1, 1] as recorded.percentiles gives
        x = np.array([p[key] for p in props], np.float64)
        below = (ref[key][None, :] < x[:, None]).sum(1) + 0.5 * (ref[key][None, :] == x[:, None]).sum(1)
        return 2.0 * below / len(ref[key]) - 1.0
    energy = 0.5 * place("onsets_per_s") + 0.5 * place("rms_db")
    q = np.stack([place("tempo_bpm"), place("mode_strength"), energy, place("centroid_hz")], axis=1)
    return audio, q, packages


def beat_alignment(y: np.ndarray, sr: int, cuts: list[float]) -> tuple[int, int] | None:
    """(cut points within ±50 ms of librosa's beats run afresh on ``y``, cut points); None when no beat is found."""
    lr = moments.librosa()
    _, frames = lr.beat.beat_track(y=y, sr=sr)
    beats = lr.frames_to_time(frames, sr=sr)
    if len(beats) < moments.MIN_BEATS:
        return None
    return int(sum(np.min(np.abs(beats - c)) <= BEAT_TOL_S for c in cuts)), len(cuts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="demo corpus seed (its champion is built when missing)")
    p.add_argument("--sectioned", type=int, default=120, help="sectioned tracks")
    p.add_argument("--answers", type=int, default=12, help="10 s clips timed through the full answer")
    p.add_argument("--device", default="cpu")
    p.add_argument("--source", default="demo", choices=["demo", "recorded"],
                   help="demo: sections are fresh renders; recorded: sections are the parts of the catalog's recordings "
                        "outside their excerpts (real music the model never heard)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng([args.seed, 23])
    t0 = time.perf_counter()
    params = {"source": args.source, "seed": args.seed, "device": args.device}
    pipeline.ensure_champion(params)
    rec = registry.load_champion(device=args.device)
    ds = load_dataset(rec.run.data_path)
    mom = rec.catalog.with_moments(moments.WindowSpec())  # today's rule, also on a champion registered under an older one
    spec = mom.spec
    print(f"champion {demo.model_label(rec)} on {ds.manifest.get('name')} (seed {args.seed}); choice {spec.choice}; "
          f"projection of {mom.projection.columns} descriptors, degree {mom.projection.degree}, ridge "
          f"{mom.projection.ridge:g}: R² {mom.projection.r2:.2f}, left-one-out {float('nan') if mom.projection.loo_r2 is None else mom.projection.loo_r2:.2f}; ready in {time.perf_counter() - t0:.0f} s", flush=True)

    sr = spec.sample_rate
    if args.source == "recorded":  # ---- sections from the unheard parts of the catalog's recordings
        audio, q, packages = unheard_sections(ds, np.random.default_rng([args.seed, 29]))
        print(f"{len(audio)} sections of recordings outside their excerpts, {time.perf_counter() - t0:.0f} s", flush=True)
        sections = []
        while len(sections) < args.sectioned:  # three recordings of three different soundtracks
            pick = rng.choice(len(audio), 3, replace=False)
            if len({packages[i] for i in pick}) == 3:
                sections.append(pick)
    else:  # ---- sectioned tracks from fresh renders
        with tempfile.TemporaryDirectory(prefix="deccm-moments-") as tmp:
            tracks = fresh_tracks(build.SIZES["default"], Path(tmp), 30, seed=10_000 + args.seed)
            audio = [moments.load_samples(Path(tmp) / t.audio, sr, SECTION_S)[: int(SECTION_S * sr)] for t in tracks]
            audio = [np.pad(y, (0, int(SECTION_S * sr) - len(y))) for y in audio]
            q = relation.music_vector(np.array([t.tempo_bpm for t in tracks]), np.array([t.mode for t in tracks]),
                                      np.array([t.onsets_per_s for t in tracks]), np.array([t.rms_db for t in tracks]),
                                      np.array([t.voices for t in tracks]))
        print(f"{len(tracks)} fresh tracks rendered (seed {10_000 + args.seed}), {time.perf_counter() - t0:.0f} s", flush=True)
        sections = [rng.choice(len(tracks), 3, replace=False) for _ in range(args.sectioned)]
    ys = [np.concatenate([audio[i] for i in s]) for s in sections]
    analyses = [moments.analyse(y, spec) for y in ys]

    v, _ = relation.from_manifest(ds.manifest, ds.videos)
    clips = np.unique(ds.ugc.test.video)
    queries = rec.query(ds.ugc.video_features[clips])
    beta = float(ds.manifest["generator"]["beta"])
    res: dict[str, list[float]] = {"model": [], "start": [], "random": [], "oracle": [], "model_expected": [],
                                   "random_expected": []}
    aligned = [0, 0]
    missed: list[str] = []  # how the cuts off the beat were made
    moved = []
    for n, c in enumerate(clips):
        j = int(rng.integers(len(sections)))
        a = relation.affinity(v[c][None, :], q[sections[j]], relation.map_of(ds.manifest))[0]  # (3,)
        p_s = np.exp(beta * (a - a.max()))
        p_s = p_s / p_s.sum()
        truth = float(rng.choice(3, p=p_s)) * SECTION_S
        m = mom.moment_in(analyses[j], queries[n], SECTION_S)  # exactly as a suggestion's moment is placed
        moved.append(abs(m.start - m.window_start))
        res["model"].append(iou(m.start, truth, SECTION_S) >= 0.5)
        res["start"].append(iou(0.0, truth, SECTION_S) >= 0.5)
        res["random"].append(random_offset_recall(truth, analyses[j].duration, SECTION_S))
        res["oracle"].append(iou(float(np.argmax(a)) * SECTION_S, truth, SECTION_S) >= 0.5)
        # the same recalls in expectation over the draw (no draw noise: the intervals are the clips')
        res["model_expected"].append(sum(p_s[k] for k in range(3) if iou(m.start, k * SECTION_S, SECTION_S) >= 0.5))
        res["random_expected"].append(sum(p_s[k] * random_offset_recall(k * SECTION_S, analyses[j].duration, SECTION_S)
                                          for k in range(3)))
        if n < 60 and analyses[j].has_beat:  # the independent beat check is slow-ish: the first 60 clips
            got = beat_alignment(ys[j], sr, m.cut_points())
            if got:
                aligned[0] += got[0]
                aligned[1] += got[1]
                if got[0] < got[1]:
                    missed.append("loop " + m.snapped if m.loop_end is not None else m.snapped)
        out = moments.render(ys[j], sr, m, spec)
        assert len(out) == round(SECTION_S * sr), "a moment of the wrong length"
    print(f"\nmoment recall (IoU ≥ 0.5 with the drawn section), {len(clips)} test clips, {len(sections)} sectioned tracks:")
    print("| choice | recall | 95 % interval |\n|---|---:|---|")
    summary: dict[str, Any] = {}
    for name, label in (("model", "model's moment (window + snap)"), ("start", "track start"),
                        ("random", "random offset (expected)"), ("oracle", "oracle section (ceiling)")):
        mean, lo, hi = interval(np.array(res[name]), rng)
        summary[name] = [mean, lo, hi]
        print(f"| {label} | {mean:.3f} | [{lo:.3f}, {hi:.3f}] |")
    for name in ("model_expected", "random_expected"):
        summary[name] = list(interval(np.array(res[name]), rng))
    print(f"expected over the draw: model {summary['model_expected'][0]:.3f} [{summary['model_expected'][1]:.3f}, "
          f"{summary['model_expected'][2]:.3f}], random offset {summary['random_expected'][0]:.3f}; ratio "
          f"{summary['model_expected'][0] / summary['random_expected'][0]:.2f}")
    print(f"ratio model / random: {summary['model'][0] / summary['random'][0]:.2f}; snap moved the start by "
          f"median {np.median(moved):.2f} s, max {np.max(moved):.2f} s")

    # ---- beat alignment on the catalog's own tracks under a 10 s clip (they are 10-14 s: loops and cuts)
    cat = [0, 0]
    with_beat = 0
    for t, row in enumerate(rec.catalog.tracks[:80]):
        a = mom.analyses[t]
        if a is None or not a.has_beat:
            continue
        with_beat += 1
        y = moments.load_samples(row["audio"], sr, spec.max_track_s)
        m = mom.moment(t, queries[t % len(queries)], 10.0)
        got = beat_alignment(y, sr, m.cut_points())
        if got:
            cat[0] += got[0]
            cat[1] += got[1]
    found = sum(a is not None and a.has_beat for a in mom.analyses)
    print(f"\nbeat alignment (cut points within ±{BEAT_TOL_S * 1000:.0f} ms of librosa's beats run afresh): sectioned "
          f"{aligned[0]}/{aligned[1]} = {aligned[0] / max(aligned[1], 1):.3f} (moments with a cut off the beat, by how "
          f"they were cut: {dict(Counter(missed))}); catalog tracks under a 10 s clip "
          f"{cat[0]}/{cat[1]} = {cat[0] / max(cat[1], 1):.3f} (a beat found in {found} of {len(mom.analyses)} catalog tracks)")
    summary["beat_alignment"] = {"sectioned": [aligned[0], aligned[1]], "catalog": [cat[0], cat[1]],
                                 "catalog_with_beat": found, "catalog_tracks": len(mom.analyses)}

    # ---- rank rule: the model's track score against each track's best 6 s window, on val and test_oracle
    length = 6.0
    window_best = []
    for t in range(len(rec.catalog.tracks)):
        a = mom.analyses[t]
        window_best.append(mom.window_vectors(a, length)[1])  # scored as a moment's windows are
    print("\nrank rule (HR@10 over each row's 101 candidates):\n| split | track score | best window |\n|---|---:|---:|")
    summary["rank_rule"] = {}
    for split in ("val", "test_oracle"):
        rows = getattr(ds.ugc, split)
        qv = rec.query(ds.ugc.video_features[rows.video])
        cand = rows.candidates()
        track = np.einsum("nd,ncd->nc", qv, rec.catalog.vectors[cand])
        best = np.array([[np.max(window_best[m] @ qv[i]) for m in cand[i]] for i in range(len(cand))])
        hr = (hit_rate(positive_rank(track), 10), hit_rate(positive_rank(best), 10))
        summary["rank_rule"][split] = hr
        print(f"| {split} | {hr[0]:.3f} | {hr[1]:.3f} |")

    # ---- preview length for every suggestion, and the full answer's time for a 10 s clip
    import media  # noqa: PLC0415 - the test helpers (tests/media.py) make real clips with ffmpeg

    svc = demo.DemoService(rec, comparison=False, device=args.device)
    errs, timings = [], []
    with tempfile.TemporaryDirectory(prefix="deccm-answers-") as tmp:
        sources = ["testsrc2", "mandelbrot", "smptebars"]
        for i in range(args.answers):
            clip = media.make_clip(Path(tmp) / f"clip{i}.mp4", duration=10.0, source=sources[i % len(sources)],
                                   size="640x360", rate=25 + 5 * (i % 2), audio=300.0 + 20 * i)
            t = time.perf_counter()
            page = svc.respond(clip, 10)
            assert page.error is None, page.error
            prev = svc.preview(clip, page.result.suggestions[0].audio)
            timings.append(time.perf_counter() - t)
            rate = 25 + 5 * (i % 2)
            for s in page.result.suggestions[: 10 if i < 3 else 1]:  # every suggestion of the first three clips
                path = prev if s.rank == 1 else svc.preview(clip, svc.playable(s.audio and _catalog_audio(rec, s.track),
                                                                              moment=s.moment))
                errs.append(abs(_duration(path) - 10.0) * rate)
    p50, p90 = np.percentile(timings, [50, 90])
    print(f"\npreview length error over {len(errs)} previews: max {max(errs):.2f} video frames (goal ≤ 1)")
    print(f"full answer for a 10 s clip (respond k=10 with moments + top preview), {len(timings)} distinct clips: "
          f"p50 {p50:.2f} s, p90 {p90:.2f} s (goal p50 < 1.5 s)")
    summary.update(preview_error_frames_max=max(errs), answer_p50_s=p50, answer_p90_s=p90, machine=platform.platform(),
                   cpus=os.cpu_count(), seed=args.seed, clips=len(clips), sectioned=len(sections), seconds=time.perf_counter() - t0)
    out = config.state_path("benchmarks", f"moments-{args.source}-s{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=float))
    print(f"\n{json.dumps({k: summary[k] for k in ('model', 'random', 'start', 'oracle', 'model_expected')}, default=float)}\nwritten {out}; "
          f"{time.perf_counter() - t0:.0f} s in all on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


def _catalog_audio(rec: Any, track: int) -> str:
    return rec.catalog.tracks[track]["audio"]


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return float(v.duration * v.time_base)


if __name__ == "__main__":
    main()
