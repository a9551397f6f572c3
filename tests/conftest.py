"""Shared fixtures: a fresh store per test and a CLI runner that keeps stdout and stderr apart."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kdcli.store import Store


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "store"
    monkeypatch.setenv("KDCLI_STORE", str(root))
    return Store(root)


@pytest.fixture
def cli(store):
    """invoke(*args) -> click Result; stdout and stderr are separate."""
    from kdcli.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke
