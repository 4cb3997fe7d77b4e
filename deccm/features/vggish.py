"""VGGish, implemented here: log-mel patches at 16 kHz → VGG → one 128-d embedding per 0.96 s.

No registry package ships VGGish or its weights, so the network and its frontend live in
the project. The module layout and parameter names follow the published torch port
(harritaylor/torchvggish: ``features.{0,3,6,8,11,13}``, ``embeddings.{0,2,4}``), so its
state dict (``vggish-10086976.pth``) loads with ``strict=True`` from a local file given by
``--vggish-weights`` or ``$DECCM_VGGISH_WEIGHTS``. Without a file the network is randomly
initialised with a fixed seed (reproducible) and reported as ``"untrained"``.

Frontend (the published VGGish parameters, AudioSet ``vggish_params``/``mel_features``):
16 kHz mono; 25 ms frames (400 samples, periodic Hann) every 10 ms (160), |rfft| with
512 points; 64 mel bands, HTK mel scale (1127·ln(1 + f/700)), triangles in the mel
domain over 125–7500 Hz; log(mel + 0.01); non-overlapping 96-frame (0.96 s) patches.
Clips shorter than one patch are zero-padded to one. The port's PCA/quantisation
postprocessor is not applied: embeddings are the network's raw 128-d output.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deccm.config import resolve_device
from deccm.features.runtime import librosa
from deccm.features.spec import UNTRAINED
from deccm.features.weights import WeightsError, load_state_dict, weights_info

log = logging.getLogger("deccm.features.vggish")

SAMPLE_RATE = 16_000
WINDOW_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
FFT_LENGTH = 512  # next power of two above the window
N_MELS = 64
FMIN_HZ = 125.0
FMAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP_FRAMES = 96  # non-overlapping
EMBEDDING_DIM = 128
ENV_VGGISH_WEIGHTS = "DECCM_VGGISH_WEIGHTS"
UNTRAINED_SEED = 0
# Keys of the published port's postprocessor (PCA), which we do not apply.
_POSTPROCESSOR_KEYS = ("pproc.pca_matrix", "pproc.pca_means")

FRONTEND = {
    "sample_rate": SAMPLE_RATE, "window": "periodic hann", "window_length": WINDOW_LENGTH, "hop_length": HOP_LENGTH,
    "fft_length": FFT_LENGTH, "spectrum": "magnitude", "n_mels": N_MELS, "fmin_hz": FMIN_HZ, "fmax_hz": FMAX_HZ,
    "mel_scale": "htk 1127*ln(1+f/700), triangles in mel domain", "log_offset": LOG_OFFSET,
    "patch_frames": PATCH_FRAMES, "patch_hop_frames": PATCH_HOP_FRAMES, "short_clips": "zero-padded to one patch",
    "postprocess": "none (no PCA/quantisation)",
}


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale as VGGish uses it."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """(FFT_LENGTH//2 + 1, N_MELS) weights: triangles linear in mel, peak 1, none at DC."""
    n_bins = FFT_LENGTH // 2 + 1
    bins_mel = hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, n_bins))
    edges = np.linspace(hz_to_mel(FMIN_HZ), hz_to_mel(FMAX_HZ), N_MELS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lower) / (center - lower)
    down = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0, :] = 0.0
    return weights


_MEL = mel_matrix()


def log_mel(samples: np.ndarray) -> np.ndarray:
    """(T,) float audio at 16 kHz → (n_frames, 64) log-mel; frames are complete 25 ms windows only."""
    lr = librosa()
    y = np.asarray(samples, dtype=np.float64)
    if y.size < WINDOW_LENGTH:
        y = np.pad(y, (0, WINDOW_LENGTH - y.size))
    frames = lr.util.frame(y, frame_length=WINDOW_LENGTH, hop_length=HOP_LENGTH, axis=0)
    window = lr.filters.get_window("hann", WINDOW_LENGTH, fftbins=True)  # periodic
    spectrum = np.abs(np.fft.rfft(frames * window, n=FFT_LENGTH, axis=1))
    return np.log(spectrum @ _MEL + LOG_OFFSET).astype(np.float32)


def patches(samples: np.ndarray) -> np.ndarray:
    """(T,) audio → (N, 96, 64) non-overlapping log-mel patches; audio shorter than a patch is zero-padded."""
    need = WINDOW_LENGTH + (PATCH_FRAMES - 1) * HOP_LENGTH
    y = np.asarray(samples, dtype=np.float64)
    if y.size < need:
        y = np.pad(y, (0, need - y.size))
    mel = log_mel(y)
    n = 1 + (mel.shape[0] - PATCH_FRAMES) // PATCH_HOP_FRAMES
    idx = np.arange(n)[:, None] * PATCH_HOP_FRAMES + np.arange(PATCH_FRAMES)[None, :]
    return mel[idx]


class VGGish(nn.Module):
    """The VGGish network (input (N, 1, 96, 64) log-mel patches, output (N, 128)).

    Layer indices match the published torch port so its state dict loads strictly.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # Flatten in (H, W, C) order like the TensorFlow original the weights come from.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def find_weights(path: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """The given path, else ``$DECCM_VGGISH_WEIGHTS``, else None."""
    if path:
        return Path(path), "file"
    if os.environ.get(ENV_VGGISH_WEIGHTS):
        return Path(os.environ[ENV_VGGISH_WEIGHTS]), f"${ENV_VGGISH_WEIGHTS}"
    return None


def load_vggish(weights: str | os.PathLike | None = None) -> tuple[VGGish, dict[str, str] | str]:
    """The network and its spec entry: loaded strictly from a state dict, or seeded random init ("untrained")."""
    found = find_weights(weights)
    if found is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            net = VGGish()
        return net.eval(), UNTRAINED
    path, source = found
    sd = load_state_dict(path)
    dropped = [k for k in _POSTPROCESSOR_KEYS if sd.pop(k, None) is not None]
    if dropped:
        log.info("%s: ignoring the postprocessor (PCA) parameters %s", path.name, ", ".join(dropped))
    net = VGGish()
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{path} is not a VGGish state dict with the torchvggish key names: {str(e).splitlines()[0]}") from e
    return net.eval(), weights_info(path, source)


class VGGishEmbedder:
    """Audio → per-patch embeddings and their clip mean, on the chosen device."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 32):
        self.device = resolve_device(device)
        net, self.weights = load_vggish(weights)
        self.net = net.to(self.device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed(self, samples: np.ndarray) -> np.ndarray:
        """(T,) 16 kHz audio → (N, 128) float32, one row per 0.96 s patch."""
        p = patches(samples)
        outs = []
        for i in range(0, len(p), self.batch_size):
            x = torch.from_numpy(p[i:i + self.batch_size]).unsqueeze(1).to(self.device)
            outs.append(self.net(x).float().cpu())
        return torch.cat(outs).numpy()

    def clip_embedding(self, samples: np.ndarray) -> np.ndarray:
        """(128,) mean over the clip's patches."""
        return self.embed(samples).mean(axis=0).astype(np.float32)
