"""Serving follows the registry: poll the champion alias, load a version only when it changed, swap atomically.

Why (docs/architecture.md, "Serving follows the registry"): a promotion or a rollback must reach
a running demo (or any long-lived :class:`deccm.serve.Recommender`) without a restart, and a
registry that is down or a version that does not load must never take the served model away.

- :class:`ChampionWatcher` holds ``(version, model)`` as one reference. A poll reads the alias's
  version (one cheap query); only a new version is loaded, in the polling thread, and the
  reference is replaced in one assignment. A request that took the reference keeps its model to
  the end; the next request gets the new one.
- A failed poll (registry outage) or a failed load keeps the served model, logs why and keeps it
  in :attr:`ChampionWatcher.last_error`; a failed version is tried again with a growing delay.
  An alias that disappears keeps the served model too (an outage can look like that).
- :func:`follow_champion` is the watcher over ``deccm-student@champion`` as Recommenders.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from deccm.serve import Recommender

log = logging.getLogger(__name__)

POLL_S = 15.0  # how often the alias is read by default
ENV_POLL = "DECCM_POLL_S"  # overrides POLL_S (e.g. in docker/compose.yaml)
MAX_RETRY_S = 600.0  # a version that failed to load is tried again after poll_s, 2·poll_s, … at most this

T = TypeVar("T")


def poll_seconds(default: float = POLL_S) -> float:
    """The poll interval: ``$DECCM_POLL_S`` or ``default``; a clear error when it is not a positive number."""
    raw = os.environ.get(ENV_POLL)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{ENV_POLL}={raw!r} is not a positive number of seconds. Fix: e.g. {ENV_POLL}=15")
    return value


@dataclass(frozen=True)
class Served(Generic[T]):
    """One loaded version; replaced whole, never changed in place."""

    version: str
    model: T
    since: float  # time.time() when it started being served


class ChampionWatcher(Generic[T]):
    """The model of the alias's current version, kept up to date by polling (``start``) or by hand (``poll``)."""

    def __init__(self, load: Callable[[str], T], version: Callable[[], str | None] | None = None, poll_s: float = POLL_S,
                 name: str = "deccm-student@champion"):
        """``load(version)`` builds the served model; ``version()`` reads the alias (default: the registry's champion)."""
        if not poll_s > 0:
            raise ValueError(f"poll_s must be positive, got {poll_s!r}")
        self._load = load
        self._version = version or _champion_version
        self.poll_s = poll_s
        self.name = name
        self._served: Served[T] | None = None
        self.last_error: str | None = None  # why the latest poll or load failed; None after a good poll
        self.last_poll: float | None = None  # time.time() of the latest poll that read the alias
        self._failed: dict[str, tuple[int, float]] = {}  # version → (failures, monotonic time of the next try)
        self._poll_lock = threading.Lock()  # one poll at a time: a version is never loaded twice at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def served(self) -> Served[T] | None:
        """What is served now (one reference: take it once per request)."""
        return self._served

    def poll(self) -> bool:
        """Read the alias once and load its version when it is new; True when the served model changed."""
        with self._poll_lock:
            try:
                version = self._version()
            except Exception as e:  # noqa: BLE001 - an outage of any kind keeps the served model
                return self._keep(f"cannot read {self.name}: {type(e).__name__}: {e}")
            self.last_poll = time.time()
            current = self._served
            if version is None:
                if current is None:
                    self.last_error = None
                    return False
                return self._keep(f"{self.name} points at no version")
            version = str(version)
            if current is not None and current.version == version:
                self.last_error = None
                return False
            failures, next_try = self._failed.get(version, (0, 0.0))
            if time.monotonic() < next_try:
                return False
            try:
                model = self._load(version)
            except Exception as e:  # noqa: BLE001 - whatever breaks a load, the served model stays
                failures += 1
                self._failed[version] = (failures, time.monotonic() + min(MAX_RETRY_S, self.poll_s * 2 ** (failures - 1)))
                return self._keep(f"cannot load {self.name} version {version}: {type(e).__name__}: {e}")
            self._failed.pop(version, None)
            self._served = Served(version, model, time.time())  # the swap: one assignment
            self.last_error = None
            log.info("serving %s version %s (was %s)", self.name, version, current.version if current else "nothing")
            return True

    def _keep(self, why: str) -> bool:
        current = self._served
        self.last_error = why
        log.warning("%s; %s", why, f"still serving version {current.version}" if current else "no model is served yet")
        return False

    @property
    def running(self) -> bool:
        """Whether a thread keeps polling."""
        return self._thread is not None

    def start(self) -> "ChampionWatcher[T]":
        """Poll every ``poll_s`` seconds in a daemon thread (the first poll at once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """End the polling thread (the served model stays)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None


def _champion_version() -> str | None:
    from deccm import registry

    return registry.champion_version()


def follow_champion(device: str = "auto", extractor: bool = True, poll_s: float = POLL_S) -> "ChampionWatcher[Recommender]":
    """``deccm-student@champion`` as a :class:`deccm.serve.Recommender` that follows the alias (polled once here;
    call ``start()`` to keep following it). Versions are loaded by number, so a move during a load is seen next poll."""
    from deccm import registry

    watcher: ChampionWatcher[Recommender] = ChampionWatcher(lambda v: registry.load(v, device=device, extractor=extractor),
                                                    poll_s=poll_s)
    watcher.poll()
    return watcher
