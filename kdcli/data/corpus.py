"""Text corpora: the files of `text:PATH` or the embedded `python-docs`, checked, and cut into documents.

A corpus is a sorted list of sources (files, or one embedded text). Its documents and their split are
fixed by the corpus alone, never by a seed:
- at least 10 sources: each source is a document; source i goes to validation if i % 10 == 8, to test if
  i % 10 == 9, else to training;
- fewer: the sources' texts, concatenated in order, are cut at line breaks into BLOCKS blocks of about
  equal size (fewer when single lines are longer than a block), block i split the same way.
Sources are read line by line (undecoded newlines kept), one document in memory at a time.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.data.fingerprints import file_state
from kdcli.errors import UsageError
from kdcli.store import canonical_json

BLOCKS = 100
BY_FILE_MIN = 10
SPLITS = ("train", "val", "test")
LAYOUT = 1  # the split and document rule above; part of every cache key derived from a corpus


def split_of(index: int) -> str:
    """The split of document `index`: 8 of every 10 train, then one validation, one test."""
    return {8: "val", 9: "test"}.get(index % 10, "train")


@dataclass
class Source:
    """One file (or embedded text): its name in messages, its size in bytes and its lines."""

    name: str
    size: int
    lines: Callable[[], Iterator[str]]


@dataclass
class Corpus:
    """The sources of one corpus, in order; `key` is what its documents depend on (for cache keys)."""

    name: str
    sources: list[Source]
    key: dict
    _checked: bool = field(default=False, repr=False)

    @property
    def by_file(self) -> bool:
        return len(self.sources) >= BY_FILE_MIN

    def check(self) -> None:
        """Read every document once: refused in one line if a source is not UTF-8 text, if all are empty,
        or if a split has no document of 2 bytes (too short to predict a token)."""
        if self._checked:
            return
        longest = dict.fromkeys(SPLITS, 0)
        for index, text in enumerate(self._all_documents()):
            longest[split_of(index)] = max(longest[split_of(index)], len(text.encode("utf-8")))
        if not any(longest.values()):
            raise UsageError(f"{self.name}: the corpus is empty")
        short = [split for split in SPLITS if longest[split] < 2]
        if short:
            raise UsageError(f"{self.name}: too small to give every split a window (none for {', '.join(short)}); "
                             f"add text")
        self._checked = True

    def splits(self) -> Iterator[tuple[str, str]]:
        """(split, text) of every document in order (the corpus checked first)."""
        self.check()
        for index, text in enumerate(self._all_documents()):
            yield split_of(index), text

    def _all_documents(self) -> Iterator[str]:
        if self.by_file:
            for source in self.sources:
                yield "".join(source.lines())
            return
        total = sum(source.size for source in self.sources)
        block, done, cut = [], 0, 1
        for source in self.sources:
            for line in source.lines():
                block.append(line)
                done += len(line.encode("utf-8"))
                if done * BLOCKS >= cut * total:
                    yield "".join(block)
                    block = []
                    while done * BLOCKS >= cut * total:
                        cut += 1
        if block:
            yield "".join(block)


def _file_lines(path: Path, shown: str) -> Callable[[], Iterator[str]]:
    def lines() -> Iterator[str]:
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                for number, line in enumerate(handle, 1):
                    if "\0" in line:
                        raise UsageError(f"text corpus: {shown} is binary, not text (a NUL byte on line {number})")
                    yield line
        except UnicodeDecodeError as exc:
            raise UsageError(f"text corpus: {shown} is not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise UsageError(f"text corpus: cannot read {shown}: {exc.strerror or exc}") from None

    return lines


def _corpus_files(path: str) -> list[Path]:
    """The files `path` names: itself, every file under a folder (recursively), or a glob's matches; sorted."""
    if not path:
        raise UsageError("text needs a file, folder or glob: text:PATH")
    if glob.has_magic(path):
        files = sorted(Path(p) for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not files:
            raise UsageError(f"text:{path}: the glob matches no file")
        return files
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UsageError(f"text:{path}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise UsageError(f"text:{path}: the folder holds no file")
    return files


def file_corpus(path: str) -> Corpus:
    """The corpus of `text:PATH`, keyed by its files' paths, sizes and modification times."""
    files = _corpus_files(path)
    sources = [Source(str(p), p.stat().st_size, _file_lines(p, str(p))) for p in files]
    listing = hashlib.sha256(canonical_json(file_state(tuple(str(p) for p in files))).encode()).hexdigest()
    return Corpus(f"text:{path}", sources, {"files": len(files), "listing": listing, "layout": LAYOUT})


def python_docs() -> Corpus:
    """CPython's reference manual topics (pydoc_data.topics), in sorted key order, joined with blank lines."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    source = Source("python-docs", len(text.encode("utf-8")), lambda: iter(text.splitlines(keepends=True)))
    return Corpus("python-docs", [source], {"python-docs": digest, "layout": LAYOUT})
