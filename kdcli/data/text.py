"""Text data sets for causal language models: `text:PATH` and the embedded `python-docs`.

A corpus (kdcli.data.corpus: documents and a seed-free split) is tokenized (kdcli.data.tokenizers)
document by document and cut into windows: a document's ids t_0..t_{n-1} give windows of context + 1
tokens with stride `context`; window w's input is t[wL : wL+L] and its target t[wL+1 : wL+L+1], so every
token but a document's first is predicted exactly once. The last window is padded (input PAD_ID,
target IGNORE); documents of fewer than 2 tokens give none.

With a store (`spec.store`), the windows are made once per (corpus, tokenizer, context) into a "data"
artifact (x_pool, y_pool, x_test, y_test (N, L) int64, train_idx, val_idx), written through memory-mapped
files, and every load maps it read-only (kdcli.data.prepared.MappedImages): the DataSet's `mapped` makes
the engine read it block by block and release touched pages, and its fingerprint is the artifact id.
Without a store they are built in memory.

Options (spec.extra): "context" (int, default 128), "tokenizer" ("bytes", "bpe:N" or a tokenizer folder).
spec.split_seed and spec.val_fraction do not apply: the split is the corpus's own.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DATASETS, DataSet, DataSpec
from kdcli.data.corpus import SPLITS, Corpus, file_corpus, python_docs
from kdcli.data.derived import derived_once
from kdcli.data.fingerprints import fingerprint
from kdcli.data.prepared import MappedImages
from kdcli.data.tokenizers import DEFAULT_TOKENIZER, TextTokenizer, check_spec, resolve_tokenizer
from kdcli.errors import UsageError
from kdcli.reporting import Reporter
from kdcli.store import canonical_json

IGNORE = -100  # the target of a masked position (torch.nn.functional.cross_entropy's ignore_index)
PAD_ID = 0  # the input id of a padded position
DEFAULT_CONTEXT = 128
WINDOWS_STAGE = "prepare-text"
WINDOW_TENSORS = ("x_pool", "y_pool", "x_test", "y_test")


@dataclass
class TextDataSet(DataSet):
    """Token windows of a corpus; task "lm".

    x_pool / x_test: (N, L) integer token ids; y_pool / y_test: (N, L) int64 next-token targets, IGNORE
    where masked. train_idx / val_idx: the pool's training and validation windows, fixed by the corpus.
    split_bytes / split_tokens: per split, the UTF-8 bytes and the number of the predicted (unmasked
    target) tokens; token_bytes: (V,) int64 UTF-8 byte length of each token id.
    """

    context: int = DEFAULT_CONTEXT
    tokenizer: dict = field(default_factory=dict)  # spec, kind, vocab_size, sha256, artifact
    split_bytes: dict = field(default_factory=dict)
    split_tokens: dict = field(default_factory=dict)
    token_bytes: torch.Tensor | None = None
    hf_tokenizer: object = field(default=None, repr=False, compare=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids stay ids: (B, L) -> (B, L) int64."""
        return x.long()

    def text_tokenizer(self):
        """The transformers PreTrainedTokenizerFast the windows were made with (encode, decode, save_pretrained)."""
        return self.hf_tokenizer

    def describe(self) -> dict:
        return {**super().describe(), "context": self.context, "tokenizer": dict(self.tokenizer),
                "split_bytes": dict(self.split_bytes), "split_tokens": dict(self.split_tokens)}


def windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """One document's ids (n,) -> inputs, targets (W, context) int64, W = ceil((n - 1) / context)."""
    count = -(-(len(ids) - 1) // context)
    x = np.full(count * context, PAD_ID, dtype=np.int64)
    y = np.full(count * context, IGNORE, dtype=np.int64)
    x[:min(len(ids), len(x))] = ids[:len(x)]
    y[:len(ids) - 1] = ids[1:]
    return x.reshape(count, context), y.reshape(count, context)


def document_windows(tokenizer: TextTokenizer, pieces: Iterator[str], context: int) -> Iterator[tuple]:
    """A document given piece by piece -> its windows as `windows` cuts the whole document's ids, in runs
    of (inputs, targets) made as the pieces are tokenized."""
    carry = np.empty(0, dtype=np.int64)  # ids from the last window's last target on
    for piece in pieces:
        ids = np.concatenate([carry, np.asarray(tokenizer.encode(piece), dtype=np.int64)])
        complete = (len(ids) - 1) // context
        if complete:
            yield windows(ids[:complete * context + 1], context)
            ids = ids[complete * context:]
        carry = ids
    if len(carry) >= 2:
        yield windows(carry, context)


class _Rows:
    """(count, L) int64 rows appended in order: in memory, or to the file `path` (mapped when done)."""

    def __init__(self, context: int, path: Path | None):
        self.context, self.path, self.count, self.parts = context, path, 0, []
        self.handle = open(path, "wb") if path is not None else None  # noqa: SIM115  (closed in tensor())

    def add(self, rows: np.ndarray) -> None:
        if self.handle is not None:
            self.handle.write(rows.tobytes())
        else:
            self.parts.append(rows)
        self.count += len(rows)

    def tensor(self) -> torch.Tensor:
        if self.handle is None:
            rows = np.concatenate(self.parts) if self.parts else np.empty((0, self.context), dtype=np.int64)
            return torch.from_numpy(rows)
        self.handle.close()
        return torch.from_numpy(np.memmap(self.path, dtype=np.int64, mode="c", shape=(self.count, self.context)))


def build_windows(corpus: Corpus, tokenizer: TextTokenizer, context: int, scratch: Path | None) -> tuple[dict, dict]:
    """Tokenize `corpus` document by document into window tensors (x_pool, y_pool, x_test, y_test,
    train_idx, val_idx), in memory or through files under `scratch`, and the per-split sizes."""
    rows = {name: _Rows(context, scratch / name if scratch is not None else None) for name in WINDOW_TENSORS}
    token_bytes = tokenizer.token_bytes.numpy()
    sizes = {"split_bytes": dict.fromkeys(SPLITS, 0), "split_tokens": dict.fromkeys(SPLITS, 0),
             "split_windows": dict.fromkeys(SPLITS, 0)}
    pool_splits = []  # the split of each pool window, run by run: (split, count)
    for split, pieces in corpus.documents():
        part = "test" if split == "test" else "pool"
        for x, y in document_windows(tokenizer, pieces, context):
            rows[f"x_{part}"].add(x)
            rows[f"y_{part}"].add(y)
            if part == "pool":
                pool_splits.append((split, len(x)))
            predicted = y[y != IGNORE]
            sizes["split_bytes"][split] += int(token_bytes[predicted].sum())
            sizes["split_tokens"][split] += len(predicted)
            sizes["split_windows"][split] += len(x)
    empty = [split for split in SPLITS if not sizes["split_windows"][split]]
    if empty:
        raise UsageError(f"{corpus.name}: too small to give every split a window at context {context} "
                         f"(none for {', '.join(empty)}); add text")
    labels = np.repeat([split for split, _ in pool_splits], [count for _, count in pool_splits])
    tensors = {name: part.tensor() for name, part in rows.items()}
    tensors["train_idx"] = torch.from_numpy(np.flatnonzero(labels == "train").astype(np.int64))
    tensors["val_idx"] = torch.from_numpy(np.flatnonzero(labels == "val").astype(np.int64))
    return tensors, sizes


def _dataset(name: str, tokenizer: TextTokenizer, context: int, tensors: dict, sizes: dict, fingerprint_: str,
             mapped=None) -> TextDataSet:
    return TextDataSet(
        name=name, task="lm", x_pool=tensors["x_pool"], y_pool=tensors["y_pool"], train_idx=tensors["train_idx"],
        val_idx=tensors["val_idx"], x_test=tensors["x_test"], y_test=tensors["y_test"],
        num_outputs=tokenizer.info["vocab_size"], fingerprint=fingerprint_, mapped=mapped, context=context,
        tokenizer=tokenizer.info, split_bytes=sizes["split_bytes"], split_tokens=sizes["split_tokens"],
        token_bytes=tokenizer.token_bytes, hf_tokenizer=tokenizer.hf)


def in_memory(corpus: Corpus, tokenizer: TextTokenizer, context: int) -> TextDataSet:
    """The windows built in memory; the fingerprint hashes them with the tokenizer and the context."""
    tensors, sizes = build_windows(corpus, tokenizer, context, None)
    digest = fingerprint(*(tensors[name] for name in (*WINDOW_TENSORS, "train_idx", "val_idx")))
    recipe = {"windows": digest, "tokenizer": tokenizer.info["sha256"], "context": context}
    return _dataset(corpus.name, tokenizer, context, tensors, sizes,
                    hashlib.sha256(canonical_json(recipe).encode()).hexdigest())


def stored(corpus: Corpus, tokenizer: TextTokenizer, context: int, store, reporter: Reporter) -> TextDataSet:
    """The windows made once into a "data" artifact of `store` and mapped; the fingerprint is its id."""
    key = {"corpus": corpus.key, "tokenizer": tokenizer.info["sha256"], "context": context}

    def make(scratch: Path) -> tuple[dict, dict]:
        reporter.info(f"{WINDOWS_STAGE}: tokenizing {corpus.name} once into the store")
        tensors, sizes = build_windows(corpus, tokenizer, context, scratch)
        artifact = tokenizer.info["artifact"]
        return tensors, {"name": corpus.name, "tokenizer": tokenizer.info, "context": context, **sizes,
                         "parents": {"tokenizer": artifact} if artifact else {}}

    artifact = derived_once(store, WINDOWS_STAGE, "data", key, make, check=corpus.check)
    mapping = MappedImages(artifact.path)
    tensors = {name: mapping.tensor(name) for name in WINDOW_TENSORS}
    tensors.update(train_idx=mapping.tensor("train_idx").clone(), val_idx=mapping.tensor("val_idx").clone())
    return _dataset(corpus.name, tokenizer, context, tensors, artifact.manifest, artifact.id, mapping)


def _context(extra: dict) -> int:
    value = extra.get("context", DEFAULT_CONTEXT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--context must be a whole number of tokens >= 1, got {value!r}")
    return value


def text_dataset(corpus_of, spec: DataSpec) -> TextDataSet:
    """The windows of the corpus `corpus_of()` gives, with the options of `spec.extra` checked first."""
    context = _context(spec.extra)
    tokenizer_spec = str(spec.extra.get("tokenizer", DEFAULT_TOKENIZER))
    check_spec(tokenizer_spec)
    corpus = corpus_of()
    reporter = spec.reporter or Reporter(quiet=True)

    def training_texts():
        documents = corpus.documents()  # checked here, before a tokenizer is trained on it
        return (piece for split, pieces in documents if split == "train" for piece in pieces)

    tokenizer = resolve_tokenizer(tokenizer_spec, corpus.key, training_texts, spec.store, reporter, corpus.check)
    if spec.store is None:
        return in_memory(corpus, tokenizer, context)
    return stored(corpus, tokenizer, context, spec.store, reporter)


@DATASETS.register("text")
def load_text(spec: DataSpec) -> TextDataSet:
    """`text:PATH`: a UTF-8 file, a folder (every file under it) or a glob."""
    return text_dataset(lambda: file_corpus(spec.arg), spec)


@DATASETS.register("python-docs")
def load_python_docs(spec: DataSpec) -> TextDataSet:
    """CPython's reference manual text (pydoc_data.topics), embedded in every install."""
    return text_dataset(python_docs, spec)


SEQUENCE_KD_STAGE = "sequence-kd"


@DATASETS.register("seqkd")
def load_sequence_kd(spec: DataSpec) -> TextDataSet:
    """`seqkd:REF`: a sequence-kd artifact of the store (kdcli.stages.sequence_kd): the teacher's sampled
    sequences are the training windows; validation and test are its source corpus's own, so bits per
    byte compares with students of that corpus. --tokenizer and --context must be the artifact's."""
    if spec.store is None:
        raise UsageError(f"--dataset seqkd:{spec.arg} reads a sequence-kd artifact, which needs a store")
    artifact = spec.store.get(spec.arg, kind="data")
    if artifact.manifest.get("stage") != SEQUENCE_KD_STAGE:
        raise UsageError(f"--dataset seqkd:{spec.arg}: {artifact.id[:12]} is not a sequence-kd artifact "
                         "(make one with 'kdcli sequence-kd TEACHER')")
    source = artifact.manifest["source_data"]
    for name, default in (("tokenizer", DEFAULT_TOKENIZER), ("context", DEFAULT_CONTEXT)):
        if spec.extra.get(name, default) != source[name]:
            raise UsageError(f"--dataset seqkd:{spec.arg} was sampled with --tokenizer {source['tokenizer']} "
                             f"--context {source['context']}; give the same")
    base = DATASETS.get(source["dataset"].partition(":")[0])(dataclasses.replace(
        spec, name=source["dataset"], arg=source["dataset"].partition(":")[2],
        extra={"tokenizer": source["tokenizer"], "context": source["context"]}))
    mapping = MappedImages(artifact.path)
    tensors = {name: mapping.tensor(name) for name in WINDOW_TENSORS}
    return dataclasses.replace(
        base, name=f"seqkd:{spec.arg}", fingerprint=artifact.id, mapped=mapping,
        train_idx=mapping.tensor("train_idx").clone(), val_idx=mapping.tensor("val_idx").clone(), **tensors,
        split_bytes=artifact.manifest["split_bytes"], split_tokens=artifact.manifest["split_tokens"])
