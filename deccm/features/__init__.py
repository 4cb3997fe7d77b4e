"""Video and music feature extraction (PyAV decoding, EfficientNet-Lite0/ResNet-50, VGGish, openSMILE, librosa).

Batch: :func:`extract_batch` → a :class:`FeatureStore` on disk (``load_store`` reads it back).
Serving: :class:`VideoExtractor` / :class:`MusicExtractor` extract one file exactly as the
store's ``spec`` says. See ``python -m deccm.features --help``.
"""
from __future__ import annotations

from deccm.features.audio import MusicExtractor, apply_norm, fit_norm
from deccm.features.batch import collect_inputs, extract_batch
from deccm.features.decode import DecodeError, read_audio, read_frames
from deccm.features.spec import ExtractorSpec, SpecMismatch, require_same, spec_id
from deccm.features.store import FeatureStore, StoreError, load_store
from deccm.features.visual import VideoExtractor
from deccm.features.weights import WeightsError

__all__ = [
    "DecodeError", "ExtractorSpec", "FeatureStore", "MusicExtractor", "SpecMismatch", "StoreError", "VideoExtractor",
    "WeightsError", "apply_norm", "collect_inputs", "extract_batch", "fit_norm", "load_store", "read_audio",
    "read_frames", "require_same", "spec_id",
]
