"""The Ray session's environment for a cluster the job starts itself."""

import os

import pytest

from pipeline.backend.dataset import LOCAL_RAYLET_ENV, _local_raylet_env

pytestmark = pytest.mark.unit


def test_the_local_raylet_env_is_set_while_ray_starts_then_removed(monkeypatch):
    (key,) = LOCAL_RAYLET_ENV
    monkeypatch.delenv(key, raising=False)
    with _local_raylet_env(LOCAL_RAYLET_ENV):
        assert int(os.environ[key]) >= 2 * (os.cpu_count() or 1)  # idle task workers kept, not restarted
    assert key not in os.environ


def test_an_operators_own_value_wins_and_is_kept(monkeypatch):
    (key,) = LOCAL_RAYLET_ENV
    monkeypatch.setenv(key, "3")
    with _local_raylet_env(LOCAL_RAYLET_ENV):
        assert os.environ[key] == "3"
    assert os.environ[key] == "3"
