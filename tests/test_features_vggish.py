"""VGGish: the published torch port's state dict loads, and the frontend has the published parameters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import media
from deccm import safeio
from deccm.features import WeightsError
from deccm.features import vggish

_one_torch_thread = pytest.fixture(autouse=True, scope="module")(media.one_torch_thread)

# harritaylor/torchvggish, torchvggish/vggish.py: VGG(make_layers()) with
# [64, M, 128, M, 256, 256, M, 512, 512, M] convs (ReLU after each) and a 3-layer embedding head.
PUBLISHED_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def published_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict with the port's key names and shapes (values seeded), plus its PCA postprocessor keys."""
    g = torch.Generator().manual_seed(7)
    sd = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in PUBLISHED_SHAPES.items()}
    sd["pproc.pca_matrix"] = torch.eye(128)
    sd["pproc.pca_means"] = torch.zeros(128, 1)
    path = tmp_path_factory.mktemp("vw") / "vggish-10086976.pth"
    torch.save(sd, path)
    return path


def test_network_has_exactly_the_published_parameter_names_and_shapes() -> None:
    got = {k: tuple(v.shape) for k, v in vggish.VGGish().state_dict().items()}
    assert got == PUBLISHED_SHAPES


@pytest.mark.slow
def test_published_state_dict_loads_strictly_and_is_recorded(published_file: Path) -> None:
    net, info = vggish.load_vggish(published_file)
    assert info == {"file": "vggish-10086976.pth", "source": "file", "sha256": safeio.sha256_file(published_file)}
    saved = torch.load(published_file, weights_only=True, map_location="cpu")
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_forward_flattens_like_the_port(published_file: Path) -> None:
    # The port flattens conv output after transpose(1, 3) then transpose(1, 2), i.e. in (H, W, C) order
    # like TensorFlow; a plain (C, H, W) flatten would silently scramble the first dense layer.
    net, _ = vggish.load_vggish(published_file)
    x = torch.from_numpy(vggish.patches(np.random.default_rng(0).normal(0, 0.1, 32_000))).unsqueeze(1)
    with torch.no_grad():
        conv = net.features(x)
        port = conv.transpose(1, 3).transpose(1, 2).contiguous().view(conv.size(0), -1)
        expected = net.embeddings(port)
        assert torch.allclose(net(x), expected)
        wrong = net.embeddings(conv.reshape(conv.size(0), -1))
        assert not torch.allclose(wrong, expected)


def test_weights_from_env_and_wrong_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      published_file: Path) -> None:
    monkeypatch.setenv(vggish.ENV_VGGISH_WEIGHTS, str(published_file))
    assert vggish.find_weights() == (published_file, "$DECCM_VGGISH_WEIGHTS")
    assert vggish.find_weights(tmp_path / "flag.pth") == (tmp_path / "flag.pth", "file")
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, bad)
    with pytest.raises(WeightsError, match="torchvggish key names"):
        vggish.load_vggish(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        vggish.load_vggish(tmp_path / "missing.pth")


def test_without_weights_it_is_untrained_but_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vggish.ENV_VGGISH_WEIGHTS, raising=False)
    audio = np.random.default_rng(1).normal(0, 0.1, 24_000).astype(np.float32)
    a, b = vggish.VGGishEmbedder(device="cpu"), vggish.VGGishEmbedder(device="cpu")
    assert a.weights == "untrained"
    ea = a.embed(audio)
    assert ea.shape == (1, 128) and np.isfinite(ea).all()
    np.testing.assert_array_equal(ea, b.embed(audio))


# -- frontend ----------------------------------------------------------------------------------

def test_frontend_constants_are_the_published_ones() -> None:
    # AudioSet vggish_params.py: SAMPLE_RATE 16000, STFT_WINDOW_LENGTH_SECONDS 0.025, STFT_HOP_LENGTH_SECONDS 0.010,
    # NUM_MEL_BINS 64, MEL_MIN_HZ 125, MEL_MAX_HZ 7500, LOG_OFFSET 0.01, EXAMPLE_WINDOW/HOP_SECONDS 0.96.
    f = vggish.FRONTEND
    assert (f["sample_rate"], f["window_length"], f["hop_length"], f["fft_length"]) == (16000, 400, 160, 512)
    assert (f["n_mels"], f["fmin_hz"], f["fmax_hz"], f["log_offset"]) == (64, 125.0, 7500.0, 0.01)
    assert (f["patch_frames"], f["patch_hop_frames"]) == (96, 96)
    assert f["window"] == "periodic hann"


def _reference_log_mel(y: np.ndarray) -> np.ndarray:
    """The published mel_features.log_mel_spectrogram, written out independently with numpy only."""
    n = 1 + (len(y) - 400) // 160
    frames = np.stack([y[i * 160:i * 160 + 400] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, 512))
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)  # noqa: E731
    bins = mel(np.linspace(0, 8000, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    m = np.zeros((257, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        m[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    m[0, :] = 0
    return np.log(spec @ m + 0.01)


def test_log_mel_matches_a_reference_of_the_published_frontend() -> None:
    y = np.random.default_rng(2).normal(0, 0.2, 16_000 + 777)
    ours = vggish.log_mel(y)
    ref = _reference_log_mel(y)
    assert ours.shape == ref.shape == (1 + (16_777 - 400) // 160, 64)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_mel_bands_agree_with_librosa_htk_filterbank_over_125_to_7500_hz() -> None:
    import librosa

    ours = vggish.mel_matrix()
    lib = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None).T
    assert ours.shape == (257, 64)
    # librosa draws the same triangles linearly in Hz rather than in mel: tiny differences only
    assert np.abs(ours - lib).max() < 0.01
    freqs = np.linspace(0, 8000, 257)
    assert not ours[(freqs < 125) | (freqs > 7500)].any()
    assert (ours.max(axis=0) > 0.5).all()  # every band catches at least one FFT bin


def test_window_is_periodic_hann() -> None:
    import librosa

    w = librosa.filters.get_window("hann", 400, fftbins=True)
    np.testing.assert_allclose(w, 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400), atol=1e-12)


def test_patches_are_non_overlapping_096_s_and_short_audio_is_padded() -> None:
    assert vggish.patches(np.zeros(32_000)).shape == (2, 96, 64)  # 198 frames → 2 whole patches
    assert vggish.patches(np.zeros(8_000)).shape == (1, 96, 64)  # 0.5 s → zero-padded to one
    y = np.random.default_rng(3).normal(0, 0.1, 3 * 16_000)
    mel = vggish.log_mel(y)
    p = vggish.patches(y)
    np.testing.assert_array_equal(p[1], mel[96:192])
    np.testing.assert_allclose(vggish.log_mel(np.zeros(16_000)), np.log(0.01), rtol=1e-6)  # silence → log offset


def test_a_1khz_tone_lands_in_the_1khz_band() -> None:
    t = np.arange(16_000) / 16_000
    mel = vggish.log_mel(np.sin(2 * np.pi * 1000 * t))
    edges = np.linspace(vggish.hz_to_mel(125), vggish.hz_to_mel(7500), 66)
    centres_hz = 700 * (np.exp(edges[1:-1] / 1127.0) - 1)
    band = int(mel.mean(axis=0).argmax())
    assert abs(centres_hz[band] - 1000) < 0.5 * (centres_hz[band + 1] - centres_hz[band - 1])
