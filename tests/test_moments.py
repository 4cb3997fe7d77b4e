"""Moments: the window the model prefers, cut on the beat to the clip's exact length (deccm.moments)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from deccm import moments, upload
from deccm.moments import Moments, Projection, WindowSpec
import media

SR = 22_050


def beat_track(seconds: float, bpm: float, loudness: list[tuple[float, float, float]], sr: int = SR) -> np.ndarray:
    """A click track (accented every fourth beat) over a low hum; ``loudness``: (from s, to s, gain) sections."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    y = 0.05 * np.sin(2 * np.pi * 110 * t)
    click = np.sin(2 * np.pi * 880 * np.arange(int(0.06 * sr)) / sr) * np.exp(-np.arange(int(0.06 * sr)) / (0.015 * sr))
    for i, b in enumerate(np.arange(0.0, seconds, 60.0 / bpm)):
        s = int(b * sr)
        part = click[: n - s] * (1.0 if i % 4 == 0 else 0.6)
        y[s:s + len(part)] += part
    gain = np.ones(n)
    for lo, hi, g in loudness:
        gain[int(lo * sr):int(hi * sr)] = g
    return (0.5 * y * gain).astype(np.float32)


def loudness_moments(tracks: list[np.ndarray], spec: WindowSpec = WindowSpec()) -> Moments:
    """Moments over ``tracks`` for a model whose only preference is loudness (a 1-d "track vector" = loudness)."""
    analyses = [moments.analyse(y, spec) for y in tracks]
    # a vector that is the loudness, fitted on real descriptors and on copies 12 dB softer and 6 dB louder (the catalog's
    # range must hold the windows': descriptors outside it are clipped to it, method §11.3)
    d = np.stack([moments.whole(a, spec) + db * np.eye(len(moments.DESCRIPTORS))[3] for db in (-12, 0, 6) for a in analyses])
    proj = Projection.fit(d, d[:, [3]])
    return Moments(spec, list(analyses), proj)


def near(times: list[float] | np.ndarray, grid: np.ndarray, tol: float = 0.05) -> np.ndarray:
    return np.array([np.min(np.abs(grid - t)) <= tol for t in times])


def test_a_planted_loud_section_is_where_the_cut_goes() -> None:
    y = beat_track(30.0, 120.0, [(0, 12, 0.15), (12, 22, 1.0), (22, 30, 0.15)])  # loud from 12 s to 22 s
    m = loudness_moments([y])
    starts, _ = m.window_scores(m.analyses[0], np.array([1.0]), 8.0)  # type: ignore[arg-type]
    beats = m.analyses[0].beats  # type: ignore[union-attr]
    assert list(starts) == list(beats[beats <= 22.0])  # a window on every beat that leaves room, and only there
    got = m.moment(0, np.array([1.0]), 8.0)
    assert 11.5 <= got.start and got.start + 8.0 <= 22.5, got  # inside the loud part, give or take the snap to the beat
    assert got.length == 8.0 and got.end == pytest.approx(got.start + 8.0) and got.loop_end is None
    quiet = m.moment(0, np.array([-1.0]), 8.0)  # a clip that wants it quiet gets a quiet part
    assert quiet.start + 8.0 <= 12.5 or quiet.start >= 21.5, quiet


def nearness(y: np.ndarray, degrees: tuple[int, ...] = (1, 2)) -> tuple[Moments, Any]:
    """Moments over track ``y`` for a model that scores nearness, −(loudness − wanted)². The catalog: every 3, 5 and
    10 s stretch of the track at three gains (real spread in all five descriptors), vector [ℓ, −ℓ²] of each one's
    loudness ℓ (z-scored), so the query [2t, 1] scores −(ℓ − t)² + const. Also the query wanting a window's loudness."""
    spec = WindowSpec()
    parts = []
    for g in (0.5, 1.0, 2.0):
        a = moments.analyse(g * y, spec)
        parts += [moments.descriptors(a, np.arange(0.0, 30.0 - n + 1e-9, 1.0), n, spec) for n in (3.0, 5.0, 10.0)]
    d = np.vstack(parts)
    loud = (d[:, 3] - d[:, 3].mean()) / d[:, 3].std()
    m = Moments(spec, [moments.analyse(y, spec)], Projection.fit(d, np.stack([loud, -loud ** 2], axis=1), degrees))

    def wanting(start: float, length: float) -> np.ndarray:
        t = (moments.descriptors(m.analyses[0], np.array([start]), length, spec)[0, 3] - d[:, 3].mean()) / d[:, 3].std()  # type: ignore[arg-type]
        return np.array([2 * t, 1.0])

    return m, wanting


def test_a_clip_that_wants_the_middle_loudness_gets_the_middle_section() -> None:
    """Nearness needs the degree-2 projection: a line in the descriptors only ever prefers an extreme, so it cannot
    carry the model's vectors (its left-out R² stays low)."""
    y = beat_track(30.0, 120.0, [(0, 10, 0.1), (10, 20, 0.35), (20, 30, 1.0)])  # quiet, middle, loud
    quad, wanting = nearness(y)
    line, _ = nearness(y, degrees=(1,))
    assert quad.projection.degree == 2 and line.projection.degree == 1
    assert quad.projection.loo_r2 > 0.9 > 0.6 > line.projection.loo_r2  # type: ignore[operator]
    q = wanting(10.0, 10.0)
    assert 9.4 <= quad.moment(0, q, 10.0).start <= 10.6  # the middle section, on its downbeat


def test_a_window_that_straddles_a_change_loses_to_one_that_fits_throughout() -> None:
    """The clip wants the loudness of a window that is 85 % quiet part and 15 % loud part. Scored as a whole, that
    straddling window fits exactly; the halves' term (method §11.4) prefers the section a little softer than wanted
    throughout (a mix of it and the quiet part only gets softer, so no straddle there fits)."""
    y = beat_track(30.0, 120.0, [(0, 10, 0.35), (10, 20, 0.1), (20, 30, 1.0)])  # middle, quiet, loud
    m, wanting = nearness(y)
    q = wanting(11.5, 10.0)
    starts, _ = m.window_scores(m.analyses[0], q, 10.0)  # type: ignore[arg-type]
    whole_only = m.projection.vectors(moments.descriptors(m.analyses[0], starts, 10.0, m.spec)) @ q  # type: ignore[arg-type]
    assert 9.0 <= starts[np.argmax(whole_only)] <= 16.0  # the straddle, no half of which fits
    assert m.moment(0, q, 10.0).start <= 3.0  # the middle section (IoU ≥ 0.5 with it), none of the loud part


def test_cut_points_sit_on_the_beat_track() -> None:
    lr = moments.librosa()
    for bpm, length in ((120.0, 8.0), (97.0, 6.3)):
        y = beat_track(24.0, bpm, [(8, 16, 1.0), (0, 8, 0.3), (16, 24, 0.3)])
        m = loudness_moments([y])
        got = m.moment(0, np.array([1.0]), length)
        # the library's beat tracker, run again here on the same audio: the cut sits on one of its beats
        _, frames = lr.beat.beat_track(y=y, sr=SR, hop_length=moments.HOP)
        beats = lr.frames_to_time(frames, sr=SR, hop_length=moments.HOP)
        assert near(got.cut_points(), beats).all(), (bpm, got.cut_points(), beats[:12])
        assert got.snapped in ("downbeat", "beat") and near(got.beats, beats).all()
        clicks = np.arange(0.0, 24.0, 60.0 / bpm)
        assert near([got.start], clicks, 0.06).all()  # and on a click: the beat tracker's beats are the real ones


def test_a_short_track_loops_on_the_beat_under_a_long_clip_without_silence() -> None:
    y = beat_track(4.0, 120.0, [])
    m = loudness_moments([y])
    got = m.moment(0, np.array([1.0]), 15.0)
    assert got.loop_end is not None and got.loop_end <= 4.0 and got.snapped in ("beat", "downbeat")
    beats = m.analyses[0].beats  # type: ignore[union-attr]
    assert near(got.cut_points(), beats).all()
    unit = got.loop_end - got.start
    assert unit == pytest.approx(round(unit / 0.5) * 0.5, abs=0.05)  # a whole number of beats at 120 BPM
    out = moments.render(y, SR, got)
    assert len(out) == 15 * SR  # exactly the clip's length
    frame = int(0.05 * SR)
    rms = np.sqrt((out[: len(out) // frame * frame].reshape(-1, frame) ** 2).mean(axis=1))
    body = rms[1:-int(0.3 / 0.05) - 1]  # all but the 10 ms fade-in's frame and the 0.3 s fade-out
    assert body.min() > 0.3 * np.median(rms), (body.min(), np.median(rms))  # no silent gap at any seam
    # the loop keeps time: the clicks of the rendered audio still fall every 0.5 s across the seams
    onsets = moments.librosa().onset.onset_detect(y=out, sr=SR, units="time", hop_length=256)
    assert len(onsets) >= 25 and np.abs(np.diff(onsets)[:-1] - 0.5).max() < 0.05, np.diff(onsets)


def test_rendering_is_exact_length_with_fades_for_every_kind_of_moment() -> None:
    y = beat_track(20.0, 110.0, [])
    m = loudness_moments([y, y[: 3 * SR]])
    for track, length in ((0, 7.3), (0, 19.0), (1, 7.3), (1, 2.0)):
        got = m.moment(track, np.array([1.0]), length)
        out = moments.render(y if track == 0 else y[: 3 * SR], SR, got)
        assert len(out) == round(length * SR) and np.isfinite(out).all()
        assert abs(out[0]) < 1e-3 and abs(out[-1]) < 1e-3  # faded in and out: no click at either end
    late = np.concatenate([np.zeros(2 * SR, np.float32) + 0.02 * np.sin(np.arange(2 * SR) / 8.0).astype(np.float32),
                           beat_track(10.0, 120.0, [])])  # 2 s of hum, then the beat: no beat leaves room for an 11 s window
    got = loudness_moments([late]).moment(0, np.array([1.0]), 11.0)
    assert got.loop_end is not None and got.start >= 1.9 and got.snapped in ("beat", "downbeat")  # it loops on the beat
    assert len(moments.render(late, SR, got)) == 11 * SR
    no_beat = 0.1 * np.sin(2 * np.pi * 220 * np.arange(10 * SR) / SR).astype(np.float32)  # a steady tone: no beat
    a = moments.analyse(no_beat)
    assert not a.has_beat
    got = moments.place(a, 3.0, 5.0)
    assert got.snapped == "none" and got.start == 3.0 and got.beats == ()


def test_the_moment_is_the_window_whose_neighbours_fit_not_a_lone_overrated_window() -> None:
    """The scores are a projection's estimates. A lone window scored above its neighbours (here at 5 s, between two
    parts) loses to the middle of a part whose windows all score well; the plain argmax takes the lone one."""
    starts = np.arange(0.0, 21.0)
    scores = np.where(starts >= 14.0, 0.8, 0.0)  # the part from 14 s fits throughout
    scores[5] = 1.0  # one window overrated
    assert moments.choose(scores, starts, 10.0, "argmax") == 5.0
    assert moments.choose(scores, starts, 10.0) >= 17.0  # its whole neighbourhood (starts within 10/3 s) fits
    flat = np.zeros(21)
    assert moments.choose(flat, starts, 10.0) == 0.0  # ties: the earliest


def test_the_projection_reads_onset_strength_when_the_model_does() -> None:
    """Which descriptors the map reads is chosen like its degree: by leave-one-track-out R² on the catalog. A model
    whose vectors follow the sixth descriptor gets a map that reads it; one told to read five explains far less."""
    rng = np.random.default_rng(3)
    d = rng.standard_normal((40, len(moments.DESCRIPTORS)))
    vectors = np.stack([d[:, 5], d[:, 0] - d[:, 5]], axis=1) + 0.05 * rng.standard_normal((40, 2))
    with_it, without = Projection.fit(d, vectors), Projection.fit(d, vectors, sets=(5,))
    assert (with_it.columns, without.columns) == (6, 5)
    assert with_it.loo_r2 > 0.95 > 0.6 > without.loo_r2  # type: ignore[operator]
    np.testing.assert_allclose(with_it.vectors(d), vectors, atol=0.2)


def test_moments_survive_a_round_trip_and_refuse_bad_settings(tmp_path: Path) -> None:
    m = loudness_moments([beat_track(12.0, 100.0, []), beat_track(9.0, 140.0, [])])
    m.analyses.append(None)  # a track without audio
    m.save(tmp_path / "m")
    back = Moments.load(tmp_path / "m")
    assert back.spec == m.spec and len(back.analyses) == 3 and back.analyses[2] is None
    q = np.array([1.0])
    assert back.moment(1, q, 4.0) == m.moment(1, q, 4.0)
    edge = m.projection.high[None, :]  # type: ignore[index]  # the map is not extrapolated past the catalog's range
    np.testing.assert_allclose(back.projection.vectors(edge + 50.0), m.projection.vectors(edge))
    meta = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert meta["window_spec"]["spec_id"] == m.spec.spec_id and meta["window_spec"]["hop_s"] == 1.0
    with pytest.raises(moments.MomentError, match="track 2 has no analysed audio"):
        back.moment(2, q, 4.0)
    for bad in ({"hop_s": 3.0}, {"hop_s": 0.0}, {"snap": "bar"}, {"max_degree": 3}, {"choice": "best"}):
        with pytest.raises(ValueError):
            WindowSpec(**bad)
    assert WindowSpec(hop_s=0.5).spec_id != WindowSpec().spec_id
    w = np.arange(12.0).reshape(6, 2)  # a bundle saved before degree 2: a linear map, no "degree" key, still serves
    linear = Projection.from_json({"mean": [1.0] * 5, "std": [2.0] * 5, "weights": w.tolist(), "r2": 0.5})
    d = moments.descriptors(m.analyses[0], np.array([0.0, 2.0]), 4.0, m.spec)  # type: ignore[arg-type]
    np.testing.assert_allclose(linear.vectors(d), np.hstack([np.ones((2, 1)), (d[:, :5] - 1.0) / 2.0]) @ w)  # the five it knew
    old = WindowSpec.from_dict({k: v for k, v in m.spec.to_dict().items() if k not in ("max_degree", "choice")})
    assert (old.max_degree, old.choice) == (1, "argmax")  # a spec saved before each rule keeps the rule it was made under
    for broken in ({"degree": 3 - m.projection.degree}, {"mean": [0.0] * 4, "std": [1.0] * 4}):
        with pytest.raises(moments.MomentError, match="export the bundle again"):
            Projection.from_json({**m.projection.to_json(), **broken})


def test_the_download_is_the_clip_with_its_moment_at_the_clip_exact_length(tmp_path: Path) -> None:
    for seconds, rate in ((10.0, 25), (7.4, 30)):
        clip = media.make_clip(tmp_path / f"clip-{seconds}.mp4", duration=seconds, size="320x240", rate=rate, audio=440.0)
        y = beat_track(4.0, 120.0, [])  # shorter than the clip: the moment loops
        m = loudness_moments([y])
        got = m.moment(0, np.array([1.0]), seconds)
        wav = moments.write_wav(tmp_path / f"moment-{seconds}.wav", moments.render(y, SR, got), SR)
        out = upload.preview(clip, wav, tmp_path / "previews")
        with av.open(str(out)) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            video_s = float(v.duration * v.time_base)
            audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
            audio_s = len(audio) / a.rate
        assert abs(video_s - seconds) <= 1.0 / rate + 1e-6, (seconds, video_s)  # ± one video frame
        assert abs(audio_s - seconds) <= 1.0 / rate + 0.05, (seconds, audio_s)  # the AAC encoder pads a frame at most
        frame = a.rate // 20
        rms = np.sqrt((audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2).mean(axis=1))
        assert rms[1:int((seconds - 0.5) * 20)].min() > 0.01  # music under the whole clip, no silent tail
