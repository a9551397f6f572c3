"""Text corpora: the files of `text:PATH` or the embedded `python-docs`, checked, and cut into documents.

A corpus is a sorted list of sources (files, or one embedded text). Its documents and their split are
fixed by the corpus alone, never by a seed:
- at least 10 sources: each source is a document; source i goes to validation if i % 10 == 8, to test if
  i % 10 == 9, else to training;
- fewer: the sources' texts, concatenated in order, are cut at line breaks into BLOCKS blocks of about
  equal size (fewer when single lines are longer than a block), block i split the same way.
Sources are read line by line (newlines kept as they are) and documents are handed out in pieces of
lines, so memory does not grow with the corpus or a document.
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
PIECE_CHARS = 1 << 16  # what is read, tokenized and held at a time
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
        for split, pieces in self._documents():
            longest[split] = max(longest[split], sum(len(piece.encode("utf-8")) for piece in pieces))
        if not any(longest.values()):
            raise UsageError(f"{self.name}: the corpus is empty")
        short = [split for split in SPLITS if longest[split] < 2]
        if short:
            raise UsageError(f"{self.name}: too small to give every split a window (none for {', '.join(short)}); "
                             f"add text")
        self._checked = True

    def documents(self) -> Iterator[tuple[str, Iterator[str]]]:
        """(split, pieces) of every document in order, the corpus checked first. A document's pieces are
        its text in order, cut at line breaks into pieces of about PIECE_CHARS characters; a document
        left unread is skipped."""
        self.check()
        return self._documents()

    def _documents(self) -> Iterator[tuple[str, Iterator[str]]]:
        for index, lines in enumerate(self._document_lines()):
            yield split_of(index), _pieces(lines)

    def _document_lines(self) -> Iterator[Iterator[str]]:
        if self.by_file:
            for source in self.sources:
                yield source.lines()
            return
        total = sum(source.size for source in self.sources)
        lines = (line for source in self.sources for line in source.lines())
        progress = {"bytes": 0, "cut": 1}  # bytes read, and the next cut: at cut * total / BLOCKS bytes

        def block(line: str) -> Iterator[str]:
            while True:
                yield line
                progress["bytes"] += len(line.encode("utf-8"))
                if progress["bytes"] * BLOCKS >= progress["cut"] * total:
                    while progress["bytes"] * BLOCKS >= progress["cut"] * total:
                        progress["cut"] += 1
                    return
                line = next(lines, None)
                if line is None:
                    return

        current: Iterator[str] = iter(())
        while True:
            for _ in current:  # the rest of a block the reader left unread
                pass
            first = next(lines, None)
            if first is None:
                return
            current = block(first)
            yield current


def _pieces(lines: Iterator[str]) -> Iterator[str]:
    """`lines` joined into pieces of about PIECE_CHARS characters (a longer line is one piece)."""
    piece, size = [], 0
    for line in lines:
        piece.append(line)
        size += len(line)
        if size >= PIECE_CHARS:
            yield "".join(piece)
            piece, size = [], 0
    if piece:
        yield "".join(piece)


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
