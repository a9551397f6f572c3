"""A language-model teacher's table: what cache-logits keeps of its next-token distribution at every
position of the training windows, and how distill reads it back.

Kinds (`--table`):
    topk:K[,tail]  the K largest log-probs (N, L, K) float16, their token ids (N, L, K) in the smallest
                   integer type that holds the vocabulary, and the tail mass 1 - sum of the K probabilities
                   (N, L) float16, so the loss can complete the distribution: the tail is spread evenly over
                   the V - K tokens left out (as top-k image tables do, FKD, Shen & Xing 2022).
    topk:K,notail  the same without the tail: the K entries renormalized (what most tools store).
    sample:N[,t]   N tokens drawn with replacement from the teacher at temperature t (default 1) per
                   position, kept as up to N distinct ids (N, L, N) with their counts (N, L, N) (count 0
                   pads), their teacher log-probs at T = 1 (N, L, N) float16, and with t != 1 the proposal
                   log-probs at t (N, L, N) float16, for the importance-weighted estimator of Anshumann et
                   al., ACL 2025 (kdcli.losses.sparse). The draws of window i are seeded by i.
    full           every log-prob (N, L, V) float16, for small vocabularies; refused past FULL_TABLE_LIMIT.
The teacher's distribution is taken at T = 1; distill tempers the log-probs (softmax(log q / T)).
A sparse table reaches the loss as a SparseTarget; only forward KL (--method kd) reads it on its slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdcli.engine import Batch
from kdcli.errors import UsageError
from kdcli.losses.sparse import SparseTarget

FULL_TABLE_LIMIT = 4 << 30  # bytes: a full table past this is refused with its size
DEFAULT_TABLE = "topk:32"
KINDS = "topk:K, topk:K,tail, topk:K,notail, sample:N, sample:N,T or full"
SAMPLE_SEED = 0x5EED  # window i draws with the generator seeded SAMPLE_SEED + i


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype safetensors stores that holds ids 0..vocab_size - 1."""
    if vocab_size <= 256:
        return torch.uint8
    return torch.int16 if vocab_size <= 32768 else torch.int32


def count_dtype(draws: int) -> torch.dtype:
    return torch.uint8 if draws <= 255 else torch.int16


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _number(text: str, arg: str, cast, example: str):
    try:
        return cast(arg)
    except ValueError:
        raise UsageError(f"--table {text}: expected a number in {example}") from None


@dataclass(frozen=True)
class TableSpec:
    """A parsed --table: kind "topk" (k, tail), "sample" (k draws at temperature t) or "full"."""

    kind: str
    k: int = 0
    tail: bool = True
    t: float = 1.0

    @classmethod
    def parse(cls, text: str | None, vocab_size: int) -> TableSpec:
        text = text or DEFAULT_TABLE
        kind, _, arg = text.partition(":")
        if kind == "full" and not arg:
            return cls("full")
        number, _, option = arg.partition(",")
        if kind == "topk":
            k = _number(text, number, int, "topk:32 or topk:32,notail")
            if option not in ("", "tail", "notail"):
                raise UsageError(f"--table {text}: topk:K takes ,tail (the default) or ,notail")
            if not 1 <= k < vocab_size:
                raise UsageError(f"--table {text}: K must be between 1 and {vocab_size - 1} (the vocabulary holds "
                                 f"{vocab_size} tokens; --table full keeps them all)")
            return cls("topk", k, option != "notail")
        if kind == "sample":
            n = _number(text, number, int, "sample:32 or sample:32,0.8")
            t = _number(text, option, float, "sample:32,0.8") if option else 1.0
            if not 1 <= n <= 32767:
                raise UsageError(f"--table {text}: N (draws per position) must be between 1 and 32767")
            if not t > 0:
                raise UsageError(f"--table {text}: the sampling temperature must be > 0")
            return cls("sample", n, False, t)
        raise UsageError(f"--table {text}: use {KINDS}")

    def spec(self) -> str:
        if self.kind == "topk":
            return f"topk:{self.k}" + ("" if self.tail else ",notail")
        if self.kind == "sample":
            return f"sample:{self.k}" + ("" if self.t == 1 else f",{self.t:g}")
        return "full"

    @property
    def sparse(self) -> bool:
        return self.kind != "full"

    def bytes_per_position(self, vocab_size: int) -> int:
        if self.kind == "full":
            return 2 * vocab_size
        ids = id_dtype(vocab_size).itemsize
        if self.kind == "topk":
            return self.k * (2 + ids) + 2 * self.tail
        return min(self.k, vocab_size) * (ids + count_dtype(self.k).itemsize + 2 + 2 * (self.t != 1))

    def check_size(self, positions: int, vocab_size: int) -> None:
        size = positions * self.bytes_per_position(vocab_size)
        if self.kind == "full" and size > FULL_TABLE_LIMIT:
            raise UsageError(f"--table full would take {gib(size)} ({positions:,} positions x {vocab_size:,} tokens "
                             f"x 2 bytes), over the {gib(FULL_TABLE_LIMIT)} limit; use --table topk:K")

    def encode(self, logits: torch.Tensor, first_window: int = 0) -> dict[str, torch.Tensor]:
        """Teacher logits (B, L, V) of windows first_window.. -> this table's tensors for the B windows."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if self.kind == "full":
            return {"logprobs": logprobs.half()}
        ids_type = id_dtype(logits.shape[-1])
        if self.kind == "sample":
            return self.draw(logits.float(), logprobs, first_window)
        top, ids = logprobs.topk(self.k, dim=-1)
        out = {"topk_logprobs": top.half(), "topk_ids": ids.to(ids_type)}
        if self.tail:
            out["tail"] = (1.0 - top.exp().sum(-1)).clamp_min(0.0).half()
        return out

    def draw(self, logits: torch.Tensor, logprobs: torch.Tensor, first_window: int) -> dict[str, torch.Tensor]:
        """N draws with replacement per position from softmax(logits / t), as distinct ids (B, L, N) (the
        most drawn first, count-0 slots pad), counts, teacher log-probs at T = 1, proposal log-probs."""
        proposal = torch.log_softmax(logits / self.t, dim=-1)
        counts = torch.zeros_like(logits)
        generator = torch.Generator(device=logits.device)
        for i in range(len(logits)):  # per window: the draws do not depend on the batch size
            generator.manual_seed(SAMPLE_SEED + first_window + i)
            draws = torch.multinomial(proposal[i].exp(), self.k, replacement=True, generator=generator)
            counts[i].scatter_add_(-1, draws, torch.ones_like(draws, dtype=counts.dtype))
        kept, ids = counts.topk(min(self.k, logits.shape[-1]), dim=-1)
        out = {"sample_ids": ids.to(id_dtype(logits.shape[-1])), "sample_counts": kept.to(count_dtype(self.k)),
               "sample_logprobs": logprobs.gather(-1, ids).clamp_min(-1e4).half()}
        if self.t != 1:
            out["sample_proposal"] = proposal.gather(-1, ids).clamp_min(-1e4).half()
        return out

    def check_serves(self, loss, temperature: float | None) -> None:
        """Refuse a loss this table cannot serve: reverse KL / JSD need every token, a sampled table
        serves forward KL at T = 1 only."""
        if not self.sparse:
            return
        method = loss.name or "(a py: loss)"
        if loss.needs_full_distribution:
            raise UsageError(f"--method {method} needs the teacher's full distribution at every token; the "
                             f"{self.spec()} table keeps a few tokens per position: give --teacher MODEL_REF "
                             "(online) or a --table full table")
        if self.kind == "sample" and not loss.reads_sparse:
            raise UsageError(f"a sampled table ({self.spec()}) is an importance-weighted estimate that forward KL "
                             f"reads (--method kd), not --method {method}")
        if self.kind == "sample" and temperature != 1:
            raise UsageError(f"a sampled table ({self.spec()}) estimates the teacher at T = 1; distill it with "
                             f"--temperature 1, not {temperature:g}")


class TokenTable:
    """A teacher signal from a cached table: pool window indices -> teacher log-probs (B, L, V) float32
    (a full table) or a SparseTarget (B, L, S) (top-k, sampled) on `device`, read from the
    (memory-mapped) tensors of the B windows only."""

    def __init__(self, tensors: dict[str, torch.Tensor], vocab_size: int, device: torch.device):
        self.tensors = tensors
        self.vocab_size = vocab_size
        self.device = device

    def read(self, name: str, idx: torch.Tensor) -> torch.Tensor | None:
        tensor = self.tensors.get(name)
        return None if tensor is None else tensor[idx].to(self.device)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor | SparseTarget:
        idx = idx.cpu()
        if "logprobs" in self.tensors:
            return self.read("logprobs", idx).float()
        if "sample_ids" in self.tensors:
            logprobs = self.read("sample_logprobs", idx).float()
            counts = self.read("sample_counts", idx).float()
            proposal = self.read("sample_proposal", idx)
            ratio = 1.0 if proposal is None else (logprobs - proposal.float()).exp()
            weights = counts / counts.sum(-1, keepdim=True).clamp_min(1.0) * ratio
            return SparseTarget(self.read("sample_ids", idx).long(), logprobs, self.vocab_size, weights=weights)
        tail = self.read("tail", idx)
        return SparseTarget(self.read("topk_ids", idx).long(), self.read("topk_logprobs", idx).float(),
                            self.vocab_size, tail=None if tail is None else tail.float())

    def __call__(self, batch: Batch) -> torch.Tensor | SparseTarget:
        return self.lookup(batch.idx)


def table_summary(spec: TableSpec, positions: int, vocab_size: int, table_bytes: int) -> dict:
    """What the table costs: bytes per position and its share of the full table's size."""
    full = positions * 2 * vocab_size
    return {"table": spec.spec(), "bytes_per_token": table_bytes / max(positions, 1),
            "full_table_bytes": full, "full_share": table_bytes / full if full else math.nan}
