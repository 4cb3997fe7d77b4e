"""deccm.watch: the champion watcher's rules, on plain functions standing in for the alias and the loader.

The watcher over the real registry, in a running demo, is tested in tests/test_demo.py
(promote and rollback reach it with no restart).
"""
from __future__ import annotations

import logging
import threading

import pytest

from deccm import watch


class Alias:
    """An alias that can move, break (an outage) and count its reads; versions that fail to load."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.down = False
        self.broken: set[str] = set()
        self.loads: list[str] = []

    def read(self) -> str | None:
        if self.down:
            raise ConnectionError("connection refused")
        return self.version

    def load(self, version: str) -> dict[str, str]:
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"bundle of version {version} is unreadable")
        return {"model": f"weights of v{version}"}


def test_nothing_is_served_until_a_champion_exists_then_only_new_versions_are_loaded() -> None:
    alias = Alias()
    w = watch.ChampionWatcher(alias.load, alias.read, poll_s=1)
    assert w.poll() is False and w.served is None and w.last_error is None
    alias.version = "1"
    assert w.poll() is True and w.served.version == "1" and w.served.model == {"model": "weights of v1"}
    assert w.poll() is False and w.poll() is False
    assert alias.loads == ["1"]  # an unchanged alias is one cheap read, never a load
    alias.version = "2"
    assert w.poll() is True and w.served.version == "2"
    alias.version = "1"  # a rollback is just another move
    assert w.poll() is True and w.served.version == "1" and alias.loads == ["1", "2", "1"]


def test_a_request_keeps_the_model_it_started_with_across_a_swap() -> None:
    alias = Alias()
    alias.version = "1"
    w = watch.ChampionWatcher(alias.load, alias.read, poll_s=1)
    w.poll()
    in_flight = w.served  # what a request takes once, at its start
    alias.version = "2"
    assert w.poll() is True
    assert in_flight.version == "1" and in_flight.model == {"model": "weights of v1"}  # untouched by the swap
    assert w.served.version == "2"  # the next request


def test_an_outage_a_failed_load_or_a_vanished_alias_keeps_the_served_model(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="deccm.watch")
    alias = Alias()
    alias.version = "1"
    w = watch.ChampionWatcher(alias.load, alias.read, poll_s=1)
    w.poll()
    served = w.served

    alias.down = True
    assert w.poll() is False and w.served is served
    assert "cannot read deccm-student@champion: ConnectionError: connection refused" in w.last_error
    assert "still serving version 1" in caplog.text
    alias.down = False

    alias.version, alias.broken = "2", {"2"}
    assert w.poll() is False and w.served is served
    assert w.last_error == "cannot load deccm-student@champion version 2: OSError: bundle of version 2 is unreadable"
    assert w.poll() is False and alias.loads == ["1", "2"]  # a failed version waits poll_s, 2·poll_s … before its next try
    w._failed["2"] = (1, 0.0)  # its retry time has come
    alias.broken = set()
    assert w.poll() is True and w.served.version == "2" and w.last_error is None

    alias.version = None  # the alias is gone: an outage or a slip, never a reason to stop serving
    assert w.poll() is False and w.served.version == "2" and "points at no version" in w.last_error


def test_the_thread_follows_the_alias_and_stops() -> None:
    alias = Alias()
    alias.version = "1"
    loaded = threading.Event()

    def load(version: str) -> str:
        if version == "3":
            loaded.set()
        return version

    w = watch.ChampionWatcher(load, alias.read, poll_s=0.05).start()
    try:
        assert w.running
        alias.version = "3"
        assert loaded.wait(60), "the polling thread never loaded the new version"
    finally:
        w.stop()
    assert not w.running and w.served.version == "3"


def test_the_poll_interval_comes_from_the_environment_with_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(watch.ENV_POLL, raising=False)
    assert watch.poll_seconds() == watch.POLL_S <= 30
    monkeypatch.setenv(watch.ENV_POLL, "2.5")
    assert watch.poll_seconds() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(watch.ENV_POLL, bad)
        with pytest.raises(ValueError, match=f"DECCM_POLL_S='{bad}' is not a positive number of seconds"):
            watch.poll_seconds()
    with pytest.raises(ValueError, match="poll_s must be positive"):
        watch.ChampionWatcher(str, poll_s=0)
