"""``evspec bench --draft``: the speculative engine (:mod:`evspec.spec`) behind the bench's
``DecodeStrategy`` seam (:mod:`evspec.bench.runner`). The bench sits above the spec package: it imports
``evspec.spec``, never the other way round.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

from evspec.bench.runner import DecodeOutcome
from evspec.errors import ConfigError
from evspec.models.registry import check_model_name
from evspec.run.shared import ModelLoader, registry_loader, resolve_device, state_factory_for
from evspec.spec.run import SpecRunConfig, build_proposer

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel



class SpeculativeStrategy:
    """``evspec bench --draft``: the speculative engine behind the bench's ``DecodeStrategy`` seam.

    Stages it times (``StageTimer``): ``prefill`` (the target's prompt pass; with parallel prefill
    the concurrent region of both models), ``draft_prefill`` (sequential only: the draft's own
    load/preprocess/encode/prefill and first proposal) and ``decode`` (first token and rounds; every
    emitted token is marked when its round ends, so a round's tokens arrive together). The oracle
    needs the target-only greedy tokens: they are computed first, outside every stage.
    One proposer per target model (the vocabulary bridge depends on the pair), one draft model.
    """

    def __init__(
        self, draft: str, *, gamma: int = 4, max_gamma: int | None = None, adaptive_gamma: bool = False,
        parallel_prefill: bool = False, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        draft_device: str | None = None, cache: str = "eager", oracle_draft: str = "tiny-eventgpt",
        bridge: str = "auto", seed: int = 0, model_loader: ModelLoader | None = None,
    ) -> None:
        self.config = SpecRunConfig(
            draft=draft, gamma=gamma, max_gamma=max_gamma, adaptive_gamma=adaptive_gamma,
            parallel_prefill=parallel_prefill, draft_device=draft_device, cache=cache, oracle_draft=oracle_draft,
            bridge=bridge, seed=seed,
        )
        if getattr(model_loader, "func", model_loader) in (None, registry_loader):  # names go to the registry
            for name in self.config.model_names()[1:]:  # the draft's (or the oracle's); the runner checks targets
                check_model_name(name)  # before any work
        self.name = f"spec:{draft}"
        self.device = torch.device(device)
        self.dtype = dtype
        self.loader = model_loader or registry_loader
        self._proposers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._factories: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"name": self.name, "draft": c.draft, "gamma": c.gamma, "max_gamma": c.max_gamma,
                "adaptive_gamma": c.adaptive_gamma, "parallel_prefill": c.parallel_prefill,
                "draft_device": c.draft_device, "cache": c.cache, "bridge": c.bridge,
                "oracle_draft": c.oracle_draft if c.draft_kind == "oracle" else None}

    def _setup(self, model: VisionLanguageModel) -> tuple[Any, Any]:
        if model not in self._proposers:
            draft_device = resolve_device(self.config.draft_device) if self.config.draft_device else self.device
            self._proposers[model] = build_proposer(self.config, model, self.loader, draft_device, self.dtype)
            self._factories[model] = state_factory_for(self.config.cache, model.language_model)
        return self._proposers[model], self._factories[model]

    def run(self, model: VisionLanguageModel, prepared: Any, features: Any, sample: Sample, timer: Any,
            settings: Any) -> Any:
        from evspec.spec.engine import speculative_generate, target_forced, target_input, target_only
        from evspec.spec.lossless import check_lossless

        proposer, factory = self._setup(model)
        common = dict(prepared=prepared, features=features, sample=sample)
        baseline = reference = None
        if self.config.draft_kind == "oracle":
            if not settings.sampling.greedy:
                raise ConfigError("oracle:ALPHA is greedy only: use temperature=0", parameters=["temperature"])
            baseline = target_only(model, max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                                   state_factory=factory, record_top2=True, **common)
            reference = baseline.token_ids
        out = speculative_generate(
            model, proposer, gamma=self.config.gamma, max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens, sampling=settings.sampling, adaptive_gamma=self.config.adaptive_gamma,
            max_gamma=self.config.max_gamma, parallel_prefill=self.config.parallel_prefill, state_factory=factory,
            reference_ids=reference, on_token=timer.mark_token, stage=timer.stage, record_top2=baseline is not None,
            **common,
        )
        c, t = out.counts, out.timings
        metrics: dict[str, Any] = {
            "acceptance_rate": c.acceptance_rate, "mean_acceptance_length": c.mean_acceptance_length,
            "drafts": c.drafts, "drafted_tokens": c.drafted_tokens, "accepted_tokens": c.accepted_tokens,
            "target_passes": c.target_passes, "tokens_per_target_pass": c.tokens_per_target_pass,
            "draft_s": t.draft_s, "verify_s": t.verify_s, "prefill_overlap": t.prefill_overlap,
            "per_position_acceptance_rate": c.per_position_acceptance_rate, "synthetic": out.synthetic,
        }
        if baseline is not None:  # the same statement evspec spec makes (evspec.spec.lossless)
            tgt = target_input(model, **common)
            check = check_lossless(
                baseline.token_ids, baseline.top2 or [], out.token_ids, out.top2 or [], model.language_model.dtype,
                rerun_from=lambda prefix: target_forced(tgt, prefix, max_new_tokens=settings.max_new_tokens,
                                                        min_new_tokens=settings.min_new_tokens, state_factory=factory),
            )
            metrics["lossless"] = check.lossless
            metrics["lossless_verdict"] = check.describe()
        return DecodeOutcome(token_ids=out.token_ids, n_prompt_tokens=out.n_prompt_tokens,
                             stopped_on_eos=out.stopped_on_eos, metrics=metrics)
