"""Tokenizers of text data sets: `bytes`, `bpe:N` and a local Hugging Face tokenizer directory.

Every tokenizer is a Hugging Face `tokenizers.Tokenizer` wrapped in a `PreTrainedTokenizerFast`, so
`save_pretrained` writes a directory `AutoTokenizer.from_pretrained` loads offline:
- `bytes`: a byte-level BPE of the 256 byte symbols and no merges; token id = byte value.
- `bpe:N`: a byte-level BPE of N tokens (N >= 257) trained on the training split (Sennrich et al.
  2016; the GPT-2 byte-level variant, Radford et al. 2019). Training is deterministic; with a store it
  runs once per corpus and N and is kept as an artifact (the tokenizer's JSON as a uint8 tensor), so a
  teacher and its students share one exact tokenizer.
- PATH: a tokenizer directory (tokenizer.json and its config), loaded with local_files_only.
A tokenizer is identified by the sha256 of its JSON (`Tokenizer.to_str()`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from kdcli.data.derived import derived_once
from kdcli.data.prepared import MappedImages
from kdcli.errors import UsageError

BYTE_SYMBOLS = 256
TOKENIZER_STAGE = "train-tokenizer"
TOKENIZER_KIND = "data"  # the store's kinds (kdcli.store.KINDS) have none of its own for tokenizers
DEFAULT_TOKENIZER = "bytes"
BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # sentencepiece's byte-fallback tokens
PROBE = "Hello, world."  # a loaded tokenizer must encode this to at least one token
ANCHOR = "a"  # the plain token a token is decoded after, to count the space a word-initial token adds

TrainingTexts = Callable[[], Iterator[str]]


@dataclass
class TextTokenizer:
    """A resolved tokenizer: the Hugging Face wrapper and its JSON-safe description (`info`)."""

    hf: object  # transformers.PreTrainedTokenizerFast
    info: dict  # spec, kind, vocab_size, sha256, artifact

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """(V,) int64: the UTF-8 bytes each token id stands for. Exact for byte-level tokenizers (one byte
        per symbol); for others, what the token adds when decoded after a plain one (a sentencepiece
        '\u2581the' adds ' the'), a byte-fallback token '<0xNN>' one byte."""
        backend = self.hf.backend_tokenizer
        length = _byte_level_length if _is_byte_level(backend) else functools.partial(_decoded_length, backend)
        tokens = self.hf.convert_ids_to_tokens(list(range(self.info["vocab_size"])))
        return torch.tensor([0 if token is None else length(token) for token in tokens], dtype=torch.int64)


def _decoded_length(backend, token: str) -> int:
    if BYTE_FALLBACK.fullmatch(token):
        return 1
    if backend.decoder is None:
        return len(token.encode("utf-8"))
    return len(backend.decoder.decode([ANCHOR, token]).encode("utf-8")) - len(ANCHOR)


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _byte_level_length(token: str) -> int:
    """Bytes a byte-level token stands for: one per symbol of the byte alphabet (an added token that is
    not in it, e.g. '<|endoftext|>', counts its own UTF-8 bytes)."""
    return len(token) if set(token) <= _byte_symbols() else len(token.encode("utf-8"))


@functools.cache
def _byte_symbols() -> frozenset[str]:
    return frozenset(_byte_to_unicode().values())


def _is_byte_level(backend) -> bool:
    from tokenizers import decoders

    decoder = backend.decoder
    return isinstance(decoder, decoders.ByteLevel)


def _wrap(backend, spec: str, kind: str, artifact: str | None = None) -> TextTokenizer:
    from transformers import PreTrainedTokenizerFast

    return _described(PreTrainedTokenizerFast(tokenizer_object=backend), spec, kind, artifact)


def _described(hf, spec: str, kind: str, artifact: str | None) -> TextTokenizer:
    digest = hashlib.sha256(hf.backend_tokenizer.to_str().encode()).hexdigest()
    return TextTokenizer(hf, {"spec": spec, "kind": kind, "vocab_size": len(hf), "sha256": digest,
                              "artifact": artifact})


def _byte_level(vocab: dict[str, int] | None = None, merges: list | None = None):
    """An empty (or given) byte-level BPE `tokenizers.Tokenizer`: GPT-2's pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges) if vocab is not None else models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_tokenizer() -> TextTokenizer:
    """The 256 byte symbols, no merges: ids are the UTF-8 bytes of the text."""
    symbols = _byte_to_unicode()
    backend = _byte_level({symbols[b]: b for b in range(BYTE_SYMBOLS)}, [])
    return _wrap(backend, DEFAULT_TOKENIZER, "bytes")


def bpe_size(spec: str) -> int:
    """N of 'bpe:N', refused unless an integer >= 257 (the 256 bytes and at least one merge)."""
    value = spec.partition(":")[2]
    try:
        size = int(value)
    except ValueError:
        raise UsageError(f"--tokenizer {spec}: N of bpe:N must be an integer, got {value!r}") from None
    if size <= BYTE_SYMBOLS:
        raise UsageError(f"--tokenizer {spec}: a byte-level BPE needs N >= {BYTE_SYMBOLS + 1} (256 bytes + merges)")
    return size


def train_bpe(size: int, texts: Iterator[str]):
    """A byte-level BPE `tokenizers.Tokenizer` of at most `size` tokens trained on `texts`, deterministic."""
    from tokenizers import pre_tokenizers, trainers

    backend = _byte_level()
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def stored_bpe(store, spec: str, corpus: dict, texts: TrainingTexts, reporter,
               check: Callable[[], None] | None = None) -> TextTokenizer:
    """bpe:N trained on `texts()` once per (corpus, N) and kept in `store`; later calls read it back."""
    from tokenizers import Tokenizer

    size = bpe_size(spec)

    def train(scratch) -> tuple[dict, dict]:
        reporter.info(f"{TOKENIZER_STAGE}: training a byte-level BPE of {size} tokens on the training split")
        trained = _wrap(train_bpe(size, texts()), spec, "bpe")
        as_json = trained.hf.backend_tokenizer.to_str().encode()
        return ({"tokenizer_json": torch.frombuffer(bytearray(as_json), dtype=torch.uint8)},
                {"name": spec, "corpus": corpus, "vocab_size": trained.info["vocab_size"],
                 "sha256": trained.info["sha256"], "parents": {}})

    artifact = derived_once(store, TOKENIZER_STAGE, TOKENIZER_KIND, {"corpus": corpus, "tokenizer": spec}, train,
                            check=check)
    as_json = bytes(MappedImages(artifact.path).tensor("tokenizer_json").numpy())
    return _wrap(Tokenizer.from_str(as_json.decode()), spec, "bpe", artifact.id)


def local_tokenizer(path: str) -> TextTokenizer:
    """A Hugging Face tokenizer directory, offline; refused in one line unless it loads as a fast tokenizer."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # whatever a broken folder raises (transformers, tokenizers' Rust, json)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--tokenizer {path}: not a loadable Hugging Face tokenizer ({reason})") from exc
    if not hasattr(hf, "backend_tokenizer"):
        raise UsageError(f"--tokenizer {path}: {type(hf).__name__} is not a fast (tokenizers) tokenizer")
    tokenizer = _described(hf, path, "hf", None)
    if not tokenizer.encode(PROBE):
        raise UsageError(f"--tokenizer {path}: it encodes no text ({len(hf)} tokens in its vocabulary)")
    return tokenizer


def check_spec(spec: str) -> None:
    """Refuse a tokenizer spec that names nothing usable, before any work (the folder loads later)."""
    if spec.startswith("bpe:"):
        bpe_size(spec)
    elif spec != DEFAULT_TOKENIZER and not os.path.isdir(spec):
        raise UsageError(f"--tokenizer {spec}: not bytes, bpe:N or a tokenizer folder")


def resolve_tokenizer(spec: str, corpus: dict, texts: TrainingTexts, store, reporter,
                      check: Callable[[], None] | None = None) -> TextTokenizer:
    """The tokenizer `spec` names; bpe:N is trained on `texts()` (the training split), kept in `store` unless
    it is None; `corpus` is the corpus's cache key."""
    check_spec(spec)
    if spec == DEFAULT_TOKENIZER:
        return byte_tokenizer()
    if spec.startswith("bpe:"):
        if store is None:
            return _wrap(train_bpe(bpe_size(spec), texts()), spec, "bpe")
        return stored_bpe(store, spec, corpus, texts, reporter, check)
    return local_tokenizer(spec)
