"""Music features: the 256-d layout, descriptors that mean what their names say, and the normalisation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import media
from deccm.features import DecodeError, MusicExtractor, apply_norm, fit_norm
from deccm.features import audio, vggish

_one_torch_thread = pytest.fixture(autouse=True, scope="module")(media.one_torch_thread)


@pytest.fixture(scope="module")
def tracks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tracks")
    clicks = d / "clicks.wav"  # 120 bpm: a 10 ms 1 kHz click every 0.5 s
    media.run_ffmpeg(["-f", "lavfi", "-i", "aevalsrc='if(lt(mod(t,0.5),0.01),sin(2*PI*1000*t),0)':s=16000:d=6",
                      "-c:a", "pcm_s16le", str(clicks)])
    chords = {}
    # tonic triad loud, the rest of the scale soft: C major, and A harmonic minor (with its G sharp)
    for name, loud, soft in (("c_major", (261.63, 329.63, 392.00), (293.66, 349.23, 440.00, 493.88)),
                             ("a_minor", (220.00, 261.63, 329.63), (246.94, 293.66, 349.23, 415.30))):
        expr = "+".join([f"0.2*sin(2*PI*{f}*t)" for f in loud] + [f"0.07*sin(2*PI*{f}*t)" for f in soft])
        chords[name] = d / f"{name}.wav"
        media.run_ffmpeg(["-f", "lavfi", "-i", f"aevalsrc='{expr}':s=16000:d=4", "-c:a", "pcm_s16le", str(chords[name])])
    return {
        **chords,
        "tone": media.make_audio(d / "a220.wav", audio=220.0),
        "noise": media.make_audio(d / "noise.ogg", audio="noise"),
        "clicks": clicks,
        "silent_video": media.make_clip(d / "silent.mp4", source="red", audio="silence"),
        "short": media.make_clip(d / "short.mp4", duration=0.5, audio=880.0),
        "noaudio": media.make_clip(d / "noaudio.mp4", audio=None),
        "m4a": media.make_audio(d / "tone.m4a", audio=440.0),
    }


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> MusicExtractor:
    return MusicExtractor(device="cpu")


def _named(extractor: MusicExtractor, vec: np.ndarray, name: str) -> float:
    names = extractor.spec["blocks"][-1]["names"]
    return float(vec[names.index(name)])


@pytest.mark.slow
def test_music_vector_is_vggish_then_egemaps_then_librosa(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    vec = music.extract(tracks["tone"])
    assert vec.shape == (256,) and vec.dtype == np.float32 and np.isfinite(vec).all()
    spec = music.spec
    assert spec["dims"] == 256 and spec["kind"] == "music"
    assert spec["weights"] == "untrained" and spec["trained"] is False  # no VGGish file given: said plainly
    blocks = {b["name"]: b for b in spec["blocks"]}
    assert (blocks["embedding"]["start"], blocks["embedding"]["stop"]) == (0, 128)
    assert (blocks["descriptor"]["start"], blocks["descriptor"]["stop"]) == (128, 256)
    names = blocks["feature_names"]["names"]
    assert len(names) == len(set(names)) == 256
    assert names[0] == "vggish_000" and names[128].startswith("F0semitoneFrom27.5Hz") and names[216] == "tempo_bpm"
    assert spec["preprocessing"]["vggish"] == vggish.FRONTEND
    np.testing.assert_allclose(vec[:128], music.embedder.clip_embedding(music_samples(tracks["tone"])), rtol=1e-5)


def music_samples(path: Path) -> np.ndarray:
    from deccm.features import read_audio

    return read_audio(path).samples


def test_egemaps_pitch_of_a_220hz_tone(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    vec = music.extract(tracks["tone"])
    # eGeMAPS F0 is in semitones above 27.5 Hz: 220 Hz is 3 octaves up = 36 semitones.
    assert abs(_named(music, vec, "F0semitoneFrom27.5Hz_sma3nz_amean") - 36.0) < 1.0


def test_librosa_descriptors_mean_what_they_say(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    tone = music.extract(tracks["tone"])
    chroma = {n: _named(music, tone, n) for n in audio.LIBROSA_DESCRIPTORS if n.startswith("chroma_")}
    assert max(chroma, key=chroma.get) == "chroma_A_mean"  # 220 Hz is an A
    assert abs(_named(music, tone, "spectral_centroid_hz_mean") - 220) < 60
    clicks = music.extract(tracks["clicks"])
    assert abs(_named(music, clicks, "tempo_bpm") - 120) < 6
    noise = music.extract(tracks["noise"])
    assert _named(music, noise, "spectral_flatness_mean") > 10 * _named(music, tone, "spectral_flatness_mean")


def test_key_mode_tells_a_major_chord_from_a_minor_one(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    major, minor = music.extract_raw(tracks["c_major"]), music.extract_raw(tracks["a_minor"])
    assert _named(music, major, "key_mode") > 0 > _named(music, minor, "key_mode")
    assert _named(music, major, "key_clarity") > 0.5 and _named(music, minor, "key_clarity") > 0.5
    assert _named(music, music.extract_raw(tracks["noise"]), "key_clarity") < _named(music, major, "key_clarity")


@pytest.mark.parametrize("tonic", range(12))
def test_key_strengths_of_the_profiles_themselves(tonic: int) -> None:
    """A key profile rotated to any tonic is that mode with clarity 1, and its mode is how far
    the other mode's best-matching profile falls short of it; silence has no key."""
    gap = 1 - max(np.corrcoef(audio.MAJOR_PROFILE, np.roll(audio.MINOR_PROFILE, k))[0, 1] for k in range(12))
    assert gap > 0.2
    mode, clarity = audio.key_strengths(np.roll(audio.MAJOR_PROFILE, tonic))
    assert mode == pytest.approx(gap) and clarity == pytest.approx(1.0)
    mode, clarity = audio.key_strengths(np.roll(audio.MINOR_PROFILE, tonic))
    assert mode == pytest.approx(-gap) and clarity == pytest.approx(1.0)
    assert audio.key_strengths(np.zeros(12)) == (0.0, 0.0)


def test_silent_short_and_m4a_tracks_give_finite_vectors(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    for name in ("silent_video", "short", "m4a"):
        vec = music.extract(tracks[name])
        assert vec.shape == (256,) and np.isfinite(vec).all(), name


def test_video_without_audio_is_a_named_failure(music: MusicExtractor, tracks: dict[str, Path]) -> None:
    with pytest.raises(DecodeError, match="^no audio stream$"):
        music.extract(tracks["noaudio"])


def test_long_tracks_are_capped_and_say_so(tracks: dict[str, Path]) -> None:
    short = MusicExtractor(device="cpu", max_seconds=1.0)
    vec, notes = short.extract_raw_with_notes(tracks["tone"])
    assert vec.shape == (256,) and any(n.startswith("capped: used the first 1 s") for n in notes)
    assert short.spec["spec_id"] != MusicExtractor(device="cpu").spec["spec_id"]


def test_normalisation_is_a_zscore_fitted_on_the_catalog_and_reapplied_at_serving(
        music: MusicExtractor, tracks: dict[str, Path]) -> None:
    raw = np.stack([music.extract_raw(tracks[n]) for n in ("tone", "noise", "clicks", "m4a")])
    mean, std = fit_norm(raw)
    z = apply_norm(raw, mean, std)
    spread = raw.astype(np.float64).std(axis=0)  # as fit_norm computes it
    varying = spread > 1e-6  # well above float32 noise, so z's own spread can be checked tightly
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1, rtol=1e-3)
    # constant on the catalog (the recorded rule: std < audio.NORM_STD_FLOOR): centred only, never blown up
    assert (std[spread < audio.NORM_STD_FLOOR] == 1).all() and np.isfinite(z).all()
    # in between (a feature that barely varies on these four tracks) it is a z-score all the same
    faint = (spread >= audio.NORM_STD_FLOOR) & ~varying
    np.testing.assert_allclose(std[faint], spread[faint], rtol=1e-3)
    serving = MusicExtractor(device="cpu", norm=(mean, std))
    np.testing.assert_allclose(serving.extract(tracks["tone"]), z[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        MusicExtractor(device="cpu", norm=(mean[:10], std[:10]))
