"""A language-model teacher's table: what cache-logits keeps of its next-token distribution at every
position of the training windows, and how distill reads it back.

Kinds (`--table`):
    topk:K   the K largest log-probs (N, L, K) float16, their token ids (N, L, K) in the smallest
             integer type that holds the vocabulary, and the tail mass 1 - sum of the K probabilities
             (N, L) float16, so the loss can complete the distribution: the tail is spread evenly over
             the V - K tokens left out (as top-k image tables do, FKD, Shen & Xing 2022).
    full     every log-prob (N, L, V) float16, for small vocabularies; refused past FULL_TABLE_LIMIT.
The teacher's distribution is taken at T = 1; distill tempers the log-probs (softmax(log q / T)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdcli.engine import Batch
from kdcli.errors import UsageError

FULL_TABLE_LIMIT = 4 << 30  # bytes: a full table past this is refused with its size
DEFAULT_TABLE = "topk:32"


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype safetensors stores that holds ids 0..vocab_size - 1."""
    if vocab_size <= 256:
        return torch.uint8
    return torch.int16 if vocab_size <= 32768 else torch.int32


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


@dataclass(frozen=True)
class TableSpec:
    """A parsed --table: kind "topk" (with k) or "full"."""

    kind: str
    k: int = 0

    @classmethod
    def parse(cls, text: str | None, vocab_size: int) -> TableSpec:
        text = text or DEFAULT_TABLE
        kind, _, arg = text.partition(":")
        if kind == "full" and not arg:
            return cls("full")
        if kind == "topk":
            try:
                k = int(arg)
            except ValueError:
                raise UsageError(f"--table {text}: topk takes an integer K, e.g. topk:32") from None
            if not 1 <= k < vocab_size:
                raise UsageError(f"--table {text}: K must be between 1 and {vocab_size - 1} (the vocabulary holds "
                                 f"{vocab_size} tokens; --table full keeps them all)")
            return cls("topk", k)
        raise UsageError(f"--table {text}: use topk:K or full")

    def spec(self) -> str:
        return f"topk:{self.k}" if self.kind == "topk" else "full"

    def bytes_per_position(self, vocab_size: int) -> int:
        if self.kind == "full":
            return 2 * vocab_size
        return self.k * (2 + id_dtype(vocab_size).itemsize) + 2

    def check_size(self, positions: int, vocab_size: int) -> None:
        size = positions * self.bytes_per_position(vocab_size)
        if self.kind == "full" and size > FULL_TABLE_LIMIT:
            raise UsageError(f"--table full would take {gib(size)} ({positions:,} positions x {vocab_size:,} tokens "
                             f"x 2 bytes), over the {gib(FULL_TABLE_LIMIT)} limit; use --table topk:K")

    def encode(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher logits (B, L, V) -> this table's tensors for the B windows."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if self.kind == "full":
            return {"logprobs": logprobs.half()}
        top, ids = logprobs.topk(self.k, dim=-1)
        tail = (1.0 - top.exp().sum(-1)).clamp_min(0.0)
        return {"topk_logprobs": top.half(), "topk_ids": ids.to(id_dtype(logits.shape[-1])), "tail": tail.half()}


class TokenTable:
    """A teacher signal from a cached table: pool window indices -> teacher log-probs (B, L, V) float32
    on `device`, read from the (memory-mapped) tensors of the B windows only."""

    def __init__(self, tensors: dict[str, torch.Tensor], vocab_size: int, device: torch.device):
        self.tensors = tensors
        self.vocab_size = vocab_size
        self.device = device

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.cpu()
        if "logprobs" in self.tensors:
            return self.tensors["logprobs"][idx].to(self.device).float()
        top = self.tensors["topk_logprobs"][idx].to(self.device).float()
        ids = self.tensors["topk_ids"][idx].to(self.device).long()
        tail = self.tensors["tail"][idx].to(self.device).float()
        rest = self.vocab_size - top.shape[-1]
        fill = torch.log(tail.clamp_min(1e-12) / max(rest, 1)).unsqueeze(-1)
        full = fill.expand(*top.shape[:-1], self.vocab_size).clone()
        return full.scatter_(-1, ids, top)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.lookup(batch.idx)


def table_summary(spec: TableSpec, positions: int, vocab_size: int, table_bytes: int) -> dict:
    """What the table costs: bytes per position and its share of the full table's size."""
    full = positions * 2 * vocab_size
    return {"table": spec.spec(), "bytes_per_token": table_bytes / max(positions, 1),
            "full_table_bytes": full, "full_share": table_bytes / full if full else math.nan}
