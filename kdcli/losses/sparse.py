"""A teacher's next-token distribution kept sparsely (a top-k or sampled table), and forward KL against
it computed on the kept slots, never as a dense (M, V) teacher.

Top-k (tail or notail) is exact for the distribution the table defines. A sampled table holds N draws
x_1..x_N ~ r (the proposal: the teacher at temperature t) per position, as distinct ids with counts c_i.
The importance-weighted estimate of the teacher p (Anshumann et al., ACL 2025, "Sparse Logit Sampling:
Accelerating Knowledge Distillation in LLMs", random-sampling KD) is

    p_hat_i = (c_i / N) * p_i / r_i,   E[c_i / N] = r_i  =>  E[p_hat_i] = p_i,

and forward KL's cross-entropy part -sum_i p_hat_i log q_i (q the student) has the gradient
(sum_i p_hat_i) q - p_hat w.r.t. the student's logits, whose expectation is q - p: the full table's
forward-KL gradient. With t = 1 the weights are c_i / N (they sum to 1). The estimate targets the
teacher at T = 1, so a sampled table distills at --temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

TAIL_FLOOR = 1e-12  # the smallest tail mass spread over the tokens a top-k table leaves out


@dataclass(frozen=True)
class SparseTarget:
    """Teacher slots per position (..., S): ids (long), teacher log-probs at T = 1 (float), and either
    the tail mass (...,) the slots leave out (top-k with tail; None renormalizes the slots) or the
    importance weights p_hat (..., S) of a sampled table. Indexed like a tensor (a mask keeps rows)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    vocab_size: int
    tail: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def __getitem__(self, index) -> SparseTarget:
        return replace(self, ids=self.ids[index], logprobs=self.logprobs[index],
                       tail=None if self.tail is None else self.tail[index],
                       weights=None if self.weights is None else self.weights[index])

    @property
    def sampled(self) -> bool:
        return self.weights is not None

    def tempered(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The top-k distribution softmax(log p / T) on the slots: log-probs (..., S) and the log-prob
        of each left-out token (...,) (the tail spread evenly; None without a tail)."""
        scaled = self.logprobs / temperature
        if self.tail is None:
            return scaled - scaled.logsumexp(-1, keepdim=True), None
        rest = max(self.vocab_size - self.ids.shape[-1], 1)
        fill = torch.log(self.tail.clamp_min(TAIL_FLOOR) / rest) / temperature
        log_z = torch.cat([scaled, (fill + torch.log(torch.tensor(float(rest)))).unsqueeze(-1)], -1).logsumexp(-1)
        return scaled - log_z.unsqueeze(-1), fill - log_z

    def dense(self) -> torch.Tensor:
        """The top-k distribution as dense log-probs (..., V), for losses that need every token (the
        left-out tokens of a tail-less table get TAIL_FLOOR)."""
        slots, fill = self.tempered(1.0)
        floor = torch.log(torch.tensor(TAIL_FLOOR)) if fill is None else fill
        full = torch.as_tensor(floor, dtype=slots.dtype).expand(*slots.shape[:-1]).unsqueeze(-1)
        return full.expand(*slots.shape[:-1], self.vocab_size).clone().scatter_(-1, self.ids, slots)


def sparse_forward_kl(student_logits: torch.Tensor, target: SparseTarget, temperature: float,
                      log_q: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_T || q_T), mean over the M rows, from student logits (M, V) and a SparseTarget (M, S):
    exact for a top-k table (the left-out tokens' share of sum_j log q_j comes from the student's row sum),
    the importance-weighted estimate for a sampled one (module docstring). `log_q`: the student's
    log_softmax(z / T) when the caller has it already."""
    if log_q is None:
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
    picked = log_q.gather(-1, target.ids)  # (M, S)
    rows = max(student_logits.shape[0], 1)
    if target.sampled:
        terms = torch.where(target.weights > 0, target.weights * (target.logprobs - picked), 0.0)
        return terms.sum() / rows * temperature**2
    slots, fill = target.tempered(temperature)
    kl = (slots.exp() * (slots - picked)).sum(-1)
    if fill is not None:
        rest = target.vocab_size - target.ids.shape[-1]
        left_out = log_q.sum(-1) - picked.sum(-1)  # sum of log q over the tokens the table leaves out
        kl = kl + fill.exp() * (rest * fill - left_out)
    return kl.sum() / rows * temperature**2
