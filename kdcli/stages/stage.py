"""A stage's description, torch-free: what the CLI needs to build its command and `--help` (name,
config dataclass, help, flags), and the code fingerprint of its cache key.

The stage's run function is named as "module:function" and imported on the stage's first call, so
listing, describing and generating the commands of every stage loads no tensor library.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdcli import usercode

# the modules whose source decides a training run's numbers (the stage's own modules come on top)
TRAINING_NUMERICS = ("kdcli.engine", "kdcli.augment", "kdcli.distributed", "kdcli.losses", "kdcli.models",
                     "kdcli.data", "kdcli.stages.runner", "kdcli.stages.common")


@functools.cache
def code_fingerprint(modules: tuple[str, ...]) -> str:
    """sha256 over the bytes of the modules' source files (a package: all its .py files), once per process."""
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"numerics module {name!r} not found")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if spec.submodule_search_locations else [origin]
        for path in files:
            digest.update(f"{name}/{path.relative_to(origin.parent)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load(dotted: str) -> Callable:
    """The function a "module:function" path names, its module imported on first use."""
    module, _, function = dotted.partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Stage:
    """A stage: its name (the CLI command), config dataclass, run function `run(cfg, RunContext)` (or its
    "module:function" path, imported on first call), help text, and the modules whose source decides
    its numbers (its cache key's code fingerprint).

    positional names a config field also accepted as the command's first argument; removed maps a
    flag that no longer exists to the one-line hint given instead; sweepable stages get a
    `kdcli sweep NAME` subcommand."""

    name: str
    config: type
    run: Callable | str
    help: str
    numerics: tuple[str, ...] = ()
    positional: str | None = None
    removed: dict = field(default_factory=dict)
    sweepable: bool = True  # a model-producing stage whose runs a sweep can rank

    def code_fingerprint(self) -> str:
        return code_fingerprint(self.numerics)

    def implementation(self) -> Callable:
        """The run function, imported on first use when given as "module:function"."""
        return load(self.run) if isinstance(self.run, str) else self.run

    def __call__(self, cfg, ctx):
        """Run the stage: `ctx` is a kdcli.stages.common.RunContext; returns its StageResult. The py: code
        its config names is captured first: this invocation named it (kdcli.usercode)."""
        usercode.declare(cfg)
        return self.implementation()(cfg, ctx)

    def cache_key(self, cfg, store) -> str:
        """The key this config's run has in `store`, found the way a real run finds it (data, parents
        and all), without running anything (kdcli.stages.runner.probe_cache_key)."""
        return load("kdcli.stages.runner:probe_cache_key")(self, cfg, store)
