"""Shared fixtures of tests/unit, tests/cli and tests/e2e: a fresh store per test and CLI runners that keep stdout and stderr apart."""

from __future__ import annotations

import os

# Tiny models on two shared cores: one torch thread is several times faster than contending for two.
# kdcli.cli.main applies KDCLI_THREADS; in-process tests apply it here. Subprocesses inherit it.
os.environ.setdefault("KDCLI_THREADS", "1")

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from kdcli.engine import apply_default_threads  # noqa: E402
from kdcli.store import Store  # noqa: E402

apply_default_threads()


def cli_for(root):
    """invoke(*args) -> click Result: kdcli run in-process against the store at `root`."""
    from kdcli.cli import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [*map(str, args), "--store", str(root)], catch_exceptions=False)

    return invoke


@pytest.fixture
def store(tmp_path, monkeypatch) -> Store:
    root = tmp_path / "store"
    monkeypatch.setenv("KDCLI_STORE", str(root))
    return Store(root)


@pytest.fixture(scope="session")
def make_cli():
    """cli_for as a fixture, for module-scoped fixtures that build their own store."""
    return cli_for


@pytest.fixture
def cli(store):
    """invoke(*args) -> click Result; stdout and stderr are separate."""
    from kdcli.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def make_image_folder():
    """write(root, per_class=10, size=20) -> root: an ImageFolder tree of noisy solid-colour images,
    half PNG and half JPEG, classes ant / bee / cow."""
    import numpy as np
    from PIL import Image

    def write(root, per_class: int = 10, size: int = 20):
        rng = np.random.default_rng(0)
        for name, color in IMAGE_CLASSES.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(np.array(color) + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
        return root

    return write


IMAGE_CLASSES = {"ant": (200, 40, 40), "bee": (40, 200, 40), "cow": (40, 40, 200)}
