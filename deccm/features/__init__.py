"""Video and music feature extraction (PyAV decoding, EfficientNet-Lite0/ResNet-50, VGGish, openSMILE, librosa).

Batch: :func:`extract_batch` → a :class:`FeatureStore` on disk (``load_store`` reads it back).
Serving: :class:`VideoExtractor` / :class:`MusicExtractor` extract one file exactly as the
store's ``spec`` says. See ``python -m deccm.features --help``.
"""
from __future__ import annotations

import importlib
from typing import Any

# name → submodule. Loaded on first use (PEP 562), so code that only compares specs
# (training, evaluation) does not pull in PyAV, torchvision, openSMILE or librosa.
_EXPORTS = {
    "MusicExtractor": "audio", "apply_norm": "audio", "fit_norm": "audio",
    "collect_inputs": "batch", "extract_batch": "batch",
    "DecodeError": "decode", "read_audio": "decode", "read_frames": "decode",
    "ExtractorSpec": "spec", "SpecMismatch": "spec", "require_same": "spec", "spec_id": "spec",
    "FeatureStore": "store", "StoreError": "store", "load_store": "store",
    "VideoExtractor": "visual",
    "WeightsError": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
