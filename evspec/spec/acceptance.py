"""Acceptance: which drafted tokens the target keeps, and the token it adds after them.

Two rules:

- greedy: keep the longest prefix of drafts equal to the target's argmax; then append the
  target's argmax at the first mismatch, or a bonus token (argmax of the last row) when every
  draft was kept. The output is the target's own greedy output, token for token.
- stochastic (Leviathan et al. 2023, Chen et al. 2023): keep draft ``x ~ q`` with probability
  ``min(1, p(x) / q(x))``; at the first rejection sample from ``norm(max(0, p - q))``; when every
  draft was kept sample a bonus from ``p``. The output is distributed exactly as ``p``.

``q = None`` means the drafts came without a distribution (n-gram lookup, a cross-tokenizer
draft): the test then uses ``q = one_hot(x)``, i.e. keep ``x`` with probability ``p(x)``, else
sample from ``p`` without ``x``. That is exact for drafts chosen by ANY rule, deterministic or
random, because the test is exact conditionally on the drafted token: for every draft rule ``r``,
``sum_x r(x) [1{y=x} p(x) + (1 - p(x)) p(y) 1{y!=x} / (1 - p(x))] = p(y)``.

``p`` and ``q`` are the distributions after temperature and top-p
(:func:`evspec.runtime.decode.probabilities`); greedy is their T -> 0 limit. The helpers
:func:`acceptance_probabilities` and :func:`residual_distribution` are the same code the sampler
uses, so the property tests check the rule that runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """``n_accepted`` drafts kept; ``next_token`` is the correction or bonus (None when the logits
    had no row after the last kept draft)."""

    n_accepted: int
    next_token: int | None

    def tokens(self, draft_ids: Sequence[int]) -> list[int]:
        """The tokens this round emits: the kept drafts, then the target's own token."""
        kept = list(draft_ids[: self.n_accepted])
        return kept if self.next_token is None else kept + [self.next_token]


def _check_rows(n_rows: int, k: int) -> None:
    if n_rows not in (k, k + 1):
        raise ValueError(f"acceptance needs {k} or {k + 1} target rows for {k} drafts, got {n_rows}")


def accept_greedy(target_logits: torch.Tensor, draft_ids: Sequence[int]) -> Verdict:
    """Longest matching prefix, then the target's argmax (``target_logits`` [k or k+1, V])."""
    k = len(draft_ids)
    _check_rows(int(target_logits.shape[0]), k)
    choice = target_logits.argmax(-1).tolist()
    n = 0
    while n < k and draft_ids[n] == choice[n]:
        n += 1
    return Verdict(n_accepted=n, next_token=choice[n] if n < len(choice) else None)


def acceptance_probabilities(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``min(1, p(x) / q(x))`` for every token x (rows [..., V]); 1 where ``q(x) = 0``.

    Where ``q(x) = 0`` the draft never proposes x, so the value is irrelevant; 1 keeps it finite.
    """
    ratio = torch.where(q > 0, p / torch.where(q > 0, q, torch.ones_like(q)), torch.ones_like(p))
    return ratio.clamp(max=1.0)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p - q))``: what to sample after a rejection (rows [..., V]).

    When ``p <= q`` everywhere (so p == q up to rounding) a rejection has probability ~0; the
    residual is then defined as ``p`` so that the rare rounding-induced rejection stays exact.
    """
    residual = (p - q).clamp(min=0.0)
    total = residual.sum(-1, keepdim=True)
    return torch.where(total > 0, residual / torch.where(total > 0, total, torch.ones_like(total)), p)


def accept_stochastic(
    p: torch.Tensor,
    draft_ids: Sequence[int],
    q: torch.Tensor | None,
    generator: torch.Generator,
) -> Verdict:
    """Rejection sampling over ``p`` [k or k+1, V] for drafts with distributions ``q`` [k, V].

    ``q=None``: one-hot drafts (module docstring). ``generator`` must live on the CPU; ``p``
    and ``q`` are moved there (a few rows; the per-token decisions need host values anyway).
    """
    k = len(draft_ids)
    _check_rows(int(p.shape[0]), k)
    p = p.detach().to("cpu", torch.float64)
    if k:
        ids = torch.as_tensor(list(draft_ids), dtype=torch.long)
        if q is None:
            q = torch.nn.functional.one_hot(ids, p.shape[-1]).to(torch.float64)
        else:
            q = q.detach().to("cpu", torch.float64)
            if q.shape != (k, p.shape[-1]):
                raise ValueError(f"q must be [{k}, {p.shape[-1]}], got {list(q.shape)}")
        accept = acceptance_probabilities(p[:k], q).gather(-1, ids[:, None])[:, 0]
        u = torch.rand(k, generator=generator, dtype=torch.float64)
        for i in range(k):
            if not bool(u[i] < accept[i]):
                residual = residual_distribution(p[i], q[i])
                return Verdict(i, int(torch.multinomial(residual, 1, generator=generator)))
    if p.shape[0] == k:
        return Verdict(k, None)
    return Verdict(k, int(torch.multinomial(p[k], 1, generator=generator)))
