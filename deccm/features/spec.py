"""Extractor specs: everything that determines a feature vector, and a stable id for it.

Features are only comparable when they were extracted the same way, so every store
records the spec of its extractor, the cache is keyed by ``spec_id``, training refuses to
mix specs (:func:`require_same`), and a registered model carries the spec so serving
extracts a new clip exactly as training did.

``spec_id`` hashes the canonical JSON of the spec (sorted keys, no whitespace), so it is
stable across processes and machines. Bump an extractor's ``version`` whenever its code
changes the numbers it produces: old caches and stores then stop matching.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

UNTRAINED = "untrained"


@dataclass(frozen=True)
class ExtractorSpec:
    """What produced a feature vector.

    ``weights`` is ``"untrained"`` or ``{"file": name, "sha256": hex, "source": where}``;
    ``blocks`` names column ranges (``{"name", "start", "stop", ...}``) of the vector.
    """

    kind: str  # "video" | "music"
    name: str
    version: int
    dims: int
    weights: dict[str, Any] | str
    preprocessing: dict[str, Any]
    blocks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return self.weights != UNTRAINED

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with ``trained`` and ``spec_id`` added (the id covers every other field)."""
        d = asdict(self)
        d["trained"] = self.trained
        d["spec_id"] = spec_id(d)
        return d


def spec_id(spec: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``spec`` (any ``spec_id`` key ignored)."""
    body = {k: v for k, v in spec.items() if k != "spec_id"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


class SpecMismatch(ValueError):
    """Features from different extractors were about to be mixed."""


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the fields where two specs differ (``spec_id`` ignored)."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key == "spec_id":
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


class HasSpec:
    """The ``spec``/``trained`` accessors every extractor shares (its ``_spec`` dict)."""

    _spec: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        """A copy of the spec of the raw vector (normalisation is data, stored beside features)."""
        return dict(self._spec)

    @property
    def trained(self) -> bool:
        return bool(self._spec["trained"])


def require_same(a: dict[str, Any], b: dict[str, Any], what_a: str = "first", what_b: str = "second") -> None:
    """Raise :class:`SpecMismatch` naming the differing fields unless both specs are identical."""
    if spec_id(a) == spec_id(b):
        return
    fields = ", ".join(diff(a, b)) or "(fields hash differently)"
    raise SpecMismatch(f"{what_a} features ({a.get('name')}, spec {spec_id(a)}) and {what_b} features "
                       f"({b.get('name')}, spec {spec_id(b)}) were extracted differently: {fields}; "
                       "re-extract one side with the other's settings")
