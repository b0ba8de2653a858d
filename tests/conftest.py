"""Test-wide environment: every Ray process on 127.0.0.1, every cache in a throwaway folder."""

from __future__ import annotations

import os

import pytest

# Ray's own switch for a loopback-only node (its name says Windows/OSX; on Linux it means
# "no cluster networking"): the tests' Ray heads, raylets and workers bind to 127.0.0.1 only.
# Set before anything imports Ray, and inherited by the subprocesses the tests start.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own row and decoder cache, so no test reads another's results."""
    monkeypatch.setenv("INFODISCARD_CACHE", str(tmp_path_factory.mktemp("cache")))
