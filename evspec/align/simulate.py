"""SIMULATED (offline) acceptance of a drafting head on stored rows: no target runs, no live loop.

From every counted position ``n`` of a row (the target's prefix ``x_0..x_n`` known, with its real
features ``f_0..f_{n-1}``), the head drafts a greedy chain of up to ``max_gamma`` tokens by its own
``draft_step`` (each step fed its parent's estimated feature, as live), and the chain is checked
against the target's own continuation ``x_{n+1}, x_{n+2}, ...`` (the stored greedy answer: what
greedy verification would accept). Accepted at gamma ``g``: the longest agreeing prefix of the first
``g`` drafts. A chain's later steps only matter while every earlier draft agreed, so the drafted
token fed back is the target's own token (the same one) and the draft's hidden state there is the
stored, teacher-forced one: exactly what a live draft model would compute on the accepted text.

Chains near the row's end draft only as far as the row goes (``min(g, T - 1 - n)`` tokens): a live
run stops at the answer's end too. Per gamma:

- ``acceptance_rate``: accepted drafts / drafted tokens;
- ``mean_acceptance_length``: accepted drafts + 1 per round (the target's own bonus token counted,
  as EAGLE's tau and vLLM's mean acceptance length do).

REPLAY: the same chains, but only those the live loop would draft, counted as it counts them. A
row is walked as greedy decoding walks it: the first round starts at the first counted position,
each next one where the previous ended (its accepted drafts plus the target's own token), and a
round drafts ``g`` tokens unless its chain reaches the answer's end (the live drafter does not know
it has missed until the target says so). Chains from every position weigh positions the live loop
never starts from, so the replay is the offline figure to hold against the live one: on the demo
pair it is within 0.009 of every head's live acceptance rate (docs/BENCHMARKS.md).

This is an offline estimate: the live loop (``evspec spec``) measures the real thing. The two can
still differ (16-bit rounding of stored features, sampling, prompts longer than the stored row 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from evspec.align.heads import Head, HeadBatch, HeadCache, HeadOutput
from evspec.errors import ConfigError

LABEL = "simulated (offline): greedy chains from every position of stored rows, checked against the target's own tokens"
REPLAY_LABEL = "simulated (offline) replay: the chains the live loop would draft, each round where the last one ended"


@dataclass
class SimulatedAcceptance:
    """Sums over chains (add two with ``merge``); rates and lengths per gamma 1..max_gamma."""

    max_gamma: int
    rounds: int = 0  # chains drafted (one per counted start position)
    accepted: list[int] = field(default_factory=list)  # [g - 1]: drafts accepted at gamma g, summed over chains
    drafted: list[int] = field(default_factory=list)  # [g - 1]: drafts made at gamma g (chains cut at the row's end)
    replay_rounds: list[int] = field(default_factory=list)  # [g - 1]: the replay's rounds at gamma g
    replay_accepted: list[int] = field(default_factory=list)
    replay_drafted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_gamma < 1:
            raise ConfigError(f"max_gamma must be >= 1, got {self.max_gamma}", parameters=["max_gamma"])
        for name in ("accepted", "drafted", "replay_rounds", "replay_accepted", "replay_drafted"):
            setattr(self, name, getattr(self, name) or [0] * self.max_gamma)

    def add_chains(self, accepted_lengths: torch.Tensor, room: torch.Tensor) -> None:
        """``accepted_lengths`` [n]: each chain's agreeing prefix (<= max_gamma); ``room`` [n]: tokens
        left after its start."""
        self.rounds += int(accepted_lengths.numel())
        for g in range(1, self.max_gamma + 1):
            self.accepted[g - 1] += int(accepted_lengths.clamp(max=g).sum())
            self.drafted[g - 1] += int(room.clamp(max=g).sum())

    def add_replay(self, accepted_from: dict[int, int], length: int) -> None:
        """One row's replay (module docstring): ``accepted_from`` maps each counted start position to
        its chain's agreeing prefix (<= max_gamma), ``length`` is the row's number of positions."""
        for g in range(1, self.max_gamma + 1):
            position = min(accepted_from, default=None)
            while position is not None and position in accepted_from and position < length - 1:
                accepted = min(accepted_from[position], g)
                room = length - 1 - position
                self.replay_rounds[g - 1] += 1
                self.replay_accepted[g - 1] += accepted
                # live, a chain is drafted whole before it is verified: g tokens, unless it reaches
                # the answer's end (its EOS ends the chain); past a mismatch the head's own tokens
                # are not in the row, so a chain that missed is counted at its full g
                self.replay_drafted[g - 1] += room if accepted >= room else g
                position += accepted + 1

    def merge(self, other: SimulatedAcceptance) -> SimulatedAcceptance:
        if other.max_gamma != self.max_gamma:
            raise ConfigError("merging simulations of different max_gamma")

        def add(a: list[int], b: list[int]) -> list[int]:
            return [x + y for x, y in zip(a, b)]

        return SimulatedAcceptance(self.max_gamma, self.rounds + other.rounds, add(self.accepted, other.accepted),
                                   add(self.drafted, other.drafted), add(self.replay_rounds, other.replay_rounds),
                                   add(self.replay_accepted, other.replay_accepted),
                                   add(self.replay_drafted, other.replay_drafted))

    def acceptance_rate(self, gamma: int) -> float | None:
        drafted = self.drafted[gamma - 1]
        return self.accepted[gamma - 1] / drafted if drafted else None

    def mean_acceptance_length(self, gamma: int) -> float | None:
        return 1 + self.accepted[gamma - 1] / self.rounds if self.rounds else None

    def replay_acceptance_rate(self, gamma: int) -> float | None:
        drafted = self.replay_drafted[gamma - 1]
        return self.replay_accepted[gamma - 1] / drafted if drafted else None

    def replay_mean_acceptance_length(self, gamma: int) -> float | None:
        rounds = self.replay_rounds[gamma - 1]
        return 1 + self.replay_accepted[gamma - 1] / rounds if rounds else None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, gammas as string keys, labelled; the replay under ``replay``."""
        gammas = range(1, self.max_gamma + 1)
        return {"label": LABEL, "rounds": self.rounds,
                "acceptance_rate": {str(g): self.acceptance_rate(g) for g in gammas},
                "mean_acceptance_length": {str(g): self.mean_acceptance_length(g) for g in gammas},
                "replay": {"label": REPLAY_LABEL, "rounds": {str(g): self.replay_rounds[g - 1] for g in gammas},
                           "acceptance_rate": {str(g): self.replay_acceptance_rate(g) for g in gammas},
                           "mean_acceptance_length": {str(g): self.replay_mean_acceptance_length(g) for g in gammas}}}


def _at(tensor: torch.Tensor | None, position: torch.Tensor) -> torch.Tensor | None:
    """Row b's entry at ``position[b]``: [B, T, ...] -> [B, ...]."""
    if tensor is None:
        return None
    index = position.clamp(max=tensor.shape[1] - 1).view(-1, *([1] * (tensor.dim() - 1)))
    return tensor.gather(1, index.expand(-1, 1, *tensor.shape[2:])).squeeze(1)


@torch.no_grad()
def simulate_batch(head: Head, batch: HeadBatch, max_gamma: int = 8) -> SimulatedAcceptance:
    """Greedy chains from every position ``head.counted(batch)`` marks (module docstring)."""
    result = SimulatedAcceptance(max_gamma)
    lengths = batch.loss_mask.sum(1) + 1  # right padding: a row's positions are 0..length-1
    inputs = batch.inputs()
    cache = head.start(batch.visual, batch.visual_mask) if "visual" in head.reads else HeadCache()
    full, full_cache = head.extend(cache, inputs)  # causal: position n's prefix cache is the first n + 1 entries
    counted = head.counted(batch)
    ids = batch.input_ids
    accepted_from: list[dict[int, int]] = [{} for _ in range(ids.shape[0])]  # row -> start -> agreeing prefix
    for n in range(ids.shape[1] - 1):
        active = counted[:, n]
        if not bool(active.any()):
            continue
        accepted = _chain(head, batch, full, full_cache.truncate(n + 1), n, lengths, max_gamma)
        room = (lengths - 1 - n).clamp(min=0)
        result.add_chains(accepted[active], room[active])
        values, rows = accepted.tolist(), active.tolist()  # one device read each, not one per row
        for row, counted_here in enumerate(rows):
            if counted_here:
                accepted_from[row][n] = values[row]
    for row, starts in enumerate(accepted_from):
        result.add_replay(starts, int(lengths[row]))
    return result


def _chain(head: Head, batch: HeadBatch, full: HeadOutput, cache: HeadCache, n: int, lengths: torch.Tensor,
           max_gamma: int) -> torch.Tensor:
    """[B] agreeing prefix length of each row's chain from position ``n``."""
    ids = batch.input_ids
    out = HeadOutput(full.features[:, n : n + 1], full.logits[:, n : n + 1])
    alive = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    accepted = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    for k in range(1, max_gamma + 1):
        position = torch.full_like(lengths, n + k)
        in_row = position < lengths
        truth = _at(ids, position)
        alive &= in_row & (out.logits[:, -1].argmax(-1) == truth)
        accepted += alive.long()
        if k == max_gamma or not bool(alive.any()):
            break
        # the next draft's parent is the (agreeing) token x_{n+k}: on the target's own text
        out, cache = head.draft_step(cache, truth, previous_feature=out.features[:, -1],
                                     draft_hidden=_at(batch.draft_hidden, position),
                                     draft_logits=_at(batch.draft_logits, position))
    return accepted


def simulate(head: Head, batches: Iterable[HeadBatch], max_gamma: int = 8) -> SimulatedAcceptance:
    """:func:`simulate_batch` summed over ``batches`` (the head in eval mode, no gradients)."""
    was_training = head.training
    head.eval()
    try:
        total = SimulatedAcceptance(max_gamma)
        for batch in batches:
            total = total.merge(simulate_batch(head, batch, max_gamma))
        return total
    finally:
        head.train(was_training)
