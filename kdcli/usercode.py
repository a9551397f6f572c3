"""A user's own Python code, named `py:FILE.py:NAME` or `py:package.module:NAME`: captured, identified,
run from the captured copy, and trusted only when this invocation named it.

- `capture(target)` reads the code without running it: a file's source, or every .py file of the
  package a dotted module belongs to (a top-level module alone: its file). The bundle
  {"origin", "entry", "files": {relative path: source}, "sha256"} goes into the artifact, and its hash
  into the cache key, so an edited class trains again.
- `load(ref, bundle)` imports the bundle's entry module from the stored sources (an in-memory package
  `_kdcli_code_<hash>`; relative imports inside a captured package work) and returns NAME. The code
  that runs is always the bundle, so a run and its rebuild run the same code, wherever the file went.
- Trust (`TRUST`): code named by this invocation (its flags or config file) runs; any other stored
  code (a model from a remote, a store someone else wrote, an earlier run's teacher) runs only with
  --trust-code or KDCLI_TRUST_CODE=1, else one line naming the artifact and the file, exit 2, before
  anything of it executes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.util
import linecache
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.errors import UsageError

PREFIX = "py:"
TRUST_ENV = "KDCLI_TRUST_CODE"
TRUST_HINT = f"allow it with --trust-code (or {TRUST_ENV}=1)"
MAX_FILES = 200  # a captured package: more .py files than this is not a model's package
MAX_BYTES = 4 << 20
CONFIG_FIELDS = ("model", "method")  # the config fields that may name py: code


def is_code_ref(value) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def split_ref(ref: str) -> tuple[str, str]:
    """"py:TARGET:NAME" -> (TARGET, NAME); TARGET is a .py file or a dotted module name."""
    target, sep, name = ref[len(PREFIX):].rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise UsageError(f"{ref!r}: expected py:FILE.py:NAME or py:package.module:NAME (NAME a class or function)")
    return target, name


def _digest(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path}\0{files[path]}\0".encode())
    return digest.hexdigest()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _capture_file(target: str) -> dict:
    path = Path(target).expanduser()
    if not path.is_file():
        raise UsageError(f"python file not found: {target}")
    files = {path.name: _read(path)}
    return {"origin": str(path.resolve()), "entry": path.stem, "files": files}


def _capture_module(target: str) -> dict:
    top = target.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finding it runs nothing
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise UsageError(f"python module {target!r} not found (is its folder on PYTHONPATH?); "
                         "or give a file: py:FILE.py:NAME")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: all of its sources, relative to the folder above it
        base = origin.parent.parent
        paths = sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    else:
        base, paths = origin.parent, [origin]
    if len(paths) > MAX_FILES or sum(p.stat().st_size for p in paths) > MAX_BYTES:
        raise UsageError(f"package {top!r} has over {MAX_FILES} files or {MAX_BYTES >> 20} MiB of source; "
                         "put the model in a small module of its own")
    files = {p.relative_to(base).as_posix(): _read(p) for p in paths}
    if not _module_file(files, target):
        raise UsageError(f"python module {target!r} not found in package {top!r} ({origin.parent})")
    return {"origin": target, "entry": target, "files": files}


def _module_file(files: dict[str, str], dotted: str) -> str | None:
    rel = dotted.replace(".", "/")
    return next((f for f in (f"{rel}.py", f"{rel}/__init__.py") if f in files), None)


def capture(target: str) -> dict:
    """The code bundle of a .py file or dotted module, read (not run) from disk now and remembered for
    this invocation as code it named (trusted)."""
    known = TRUST.captured.get(target)
    if known is not None:
        return known
    bundle = _capture_file(target) if target.endswith(".py") or os.sep in target else _capture_module(target)
    bundle["sha256"] = _digest(bundle["files"])
    TRUST.captured[target] = bundle
    return bundle


def describe(bundle: dict) -> str:
    """"model.py (sha256 1a2b3c4d5e6f)": how a refusal or a listing names stored code."""
    return f"{bundle.get('origin', '?')} (sha256 {str(bundle.get('sha256', ''))[:12]})"


@dataclass
class CodeTrust:
    """This invocation's trust: the code its command line named (captured), and --trust-code."""

    allow_all: bool = False
    captured: dict[str, dict] = field(default_factory=dict)

    def reset(self, allow_all: bool = False) -> None:
        """A new invocation: nothing named yet, trust as its --trust-code says."""
        self.allow_all = bool(allow_all)
        self.captured.clear()

    def allows(self, bundle: dict) -> bool:
        named = any(b["sha256"] == bundle.get("sha256") for b in self.captured.values())
        return self.allow_all or named or os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")

    def check(self, bundle: dict, where: str) -> None:
        if not self.allows(bundle):
            raise UsageError(f"{where} runs stored Python code {describe(bundle)} that this command did not name; "
                             f"{TRUST_HINT}")


TRUST = CodeTrust()


def declare(config) -> None:
    """Capture the py: code a stage's config names (its model, its method): this invocation named it."""
    for name in CONFIG_FIELDS:
        value = getattr(config, name, None)
        if is_code_ref(value):
            capture(split_ref(value)[0])


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `root.<module>` from a bundle's sources held in memory (root itself is an empty package)."""

    def __init__(self, root: str, files: dict[str, str]):
        self.root, self.files = root, files

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.root and not fullname.startswith(self.root + "."):
            return None
        dotted = fullname[len(self.root) + 1:]
        found = _module_file(self.files, dotted) if dotted else None
        package = not dotted or (found or "").endswith("__init__.py") or (
            found is None and any(f.startswith(dotted.replace(".", "/") + "/") for f in self.files))
        if found is None and not package:
            return None
        origin = f"<kdcli stored code {self.root}>/{found}" if found else None
        return importlib.util.spec_from_loader(fullname, self, origin=origin, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if module.__spec__.origin is None:
            return
        filename = module.__spec__.origin
        source = self.files[filename.split(">/", 1)[1]]
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # inspect.getsource
        module.__file__ = filename
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 (the user's own, trusted code)


def load(ref: str, bundle: dict | None = None, where: str = "") -> object:
    """NAME of `ref` (py:TARGET:NAME), run from `bundle` (stored code, trust-checked first: `where` names
    the artifact in a refusal) or, without one, from the code captured from disk now."""
    target, name = split_ref(ref)
    if bundle is None:
        bundle = capture(target)
    else:
        TRUST.check(bundle, where or f"{ref!r}")
    root = f"_kdcli_code_{bundle['sha256'][:16]}"
    if not any(isinstance(f, _BundleImporter) and f.root == root for f in sys.meta_path):
        sys.meta_path.insert(0, _BundleImporter(root, dict(bundle["files"])))
    try:
        module = importlib.import_module(f"{root}.{bundle['entry']}")
    except UsageError:
        raise
    except Exception as exc:  # the user's module failed while importing: one line, their error
        raise UsageError(f"{bundle.get('origin', target)} failed to import: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, name):
        raise UsageError(f"{bundle.get('origin', target)} has no {name!r}")
    return getattr(module, name)
