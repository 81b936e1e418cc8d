"""AdapterProposer: every head of ADAPTERS drafting live in the lossless loop.

Heads are built untrained (seeded) and saved with save_head into tmp_path, so these tests need no
training run. Lossless (greedy): token-identical to the target alone over several seeds and gamma
1-8, on bare tiny language models (eight heads; a draft that is a noisy copy of the target, so the
draft-reading heads are partly accepted, not only rejected) and on the tiny VLM pair
(tiny-videollava target, tiny-eventgpt draft: all ten, EC with the event model's encoder and VS
with the target's visual tokens, parallel prefill too). Sampling: distribution-exact for B1 and the
TokenAdapter by the G-test of ``tests/spec/test_lossless_sampling.py`` with its power computed here.
Plumbing: a stub head that returns the target's true feature (and checks every feature it is
given against a teacher-forced pass) is accepted almost always. Then ``--draft adapter:RUN``
through the CLI, and RUN folders that are not heads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from evspec.align.heads import ADAPTERS, B1Head, HeadCache, HeadConfig, HeadInputs, build_adapter, save_head
from evspec.align.proposer import AdapterProposer, read_adapter_run, simulated_acceptance
from evspec.errors import ConfigError, ModelError
from evspec.runtime.decode import LanguageModel, SamplingConfig, prefill, probabilities
from evspec.spec.engine import compare, speculative_generate, target_only

from ..spec.conftest import EOS, tiny_lm
from ..spec.test_lossless_greedy import noisy_copy, prompt_for
from ..spec.test_lossless_sampling import LEVEL, g_test_pvalue, power

pytestmark = pytest.mark.filterwarnings("ignore::evspec.errors.EvspecWarning")  # the tiny pair's long synthetic event windows

MAX_NEW = 16
BARE_HEADS = ("TokenAdapter", "L1", "L2", "L3", "L4", "L5", "B1", "L5F")  # EC and VS need a VLM's visual features


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(target: LanguageModel, draft: LanguageModel | None, visual_size: int = 0) -> HeadConfig:
    return HeadConfig(hidden_size=target.hidden_size, vocab_size=target.vocab_size,
                      draft_hidden_size=draft.hidden_size if draft is not None else 0,
                      draft_vocab_size=draft.vocab_size if draft is not None else 0, visual_size=visual_size,
                      bottleneck=16, wide_bottleneck=32, token_rank=16, num_heads=4, ffn_size=64, visual_queries=2)


def head_folder(folder: Path, adapter: str, target: LanguageModel, draft: LanguageModel | None, *, seed: int,
                visual_size: int = 0) -> Path:
    """An untrained, seeded head saved as a training run saves it."""
    torch.manual_seed(seed)
    head = build_adapter(adapter, small_config(target, draft, visual_size), target.embed_tokens, target.lm_head)
    return save_head(head, folder)


# ----------------------------------------------------------------------------- bare language models


@pytest.fixture(scope="module")
def bare_pair() -> tuple[LanguageModel, LanguageModel]:
    """A target and a noisy copy of it as the draft (one vocabulary, one width)."""
    target = tiny_lm(0, 66)
    return target, noisy_copy(target, 66, 0.05, seed=5)


@pytest.mark.parametrize("adapter", BARE_HEADS)
def test_every_head_is_lossless_greedy_on_bare_models(tmp_path: Path, bare_pair, adapter: str) -> None:
    target, draft = bare_pair
    accepted = drafted = 0
    for seed in range(3):
        proposer = AdapterProposer.from_folder(head_folder(tmp_path / str(seed), adapter, target, draft, seed=seed),
                                               target, draft=draft)
        for gamma in range(1, 9):
            prompt = prompt_for(seed * 8 + gamma, vocab=66)
            base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW)
            out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[EOS],
                                       max_new_tokens=MAX_NEW, gamma=gamma, adaptive_gamma=gamma % 3 == 0)
            assert out.token_ids == base.token_ids, (adapter, seed, gamma)
            accepted += out.counts.accepted_tokens
            drafted += out.counts.drafted_tokens
    assert drafted > 0
    if adapter in ("L1", "L2", "L3"):  # at init a residual bottleneck is the identity: the noisy copy's own feature
        assert 0.5 < accepted / drafted < 1, (accepted, drafted)  # mostly accepted, rejections too


def test_a_feature_reading_head_runs_with_parallel_prefill(tmp_path: Path, bare_pair) -> None:
    target, draft = bare_pair
    for adapter in ("B1", "L5F"):
        proposer = AdapterProposer.from_folder(head_folder(tmp_path / adapter, adapter, target, draft, seed=1),
                                               target, draft=draft)
        assert proposer.taps and not proposer.taps.prompt
        for seed in range(3):
            prompt = prompt_for(40 + seed, vocab=66)
            base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW)
            out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                                       gamma=3 + seed, parallel_prefill=True)
            assert out.token_ids == base.token_ids and out.counts.drafted_tokens > 0


@pytest.mark.parametrize("adapter", ["B1", "L5F", "TokenAdapter"])
def test_heads_are_lossless_on_the_static_path(tmp_path: Path, bare_pair, adapter: str) -> None:
    """Target and draft on StaticDecoder (taps as extra outputs of the compiled step)."""
    from evspec.runtime.static import StaticDecoder

    target, draft = bare_pair
    target_factory = StaticDecoder(target, max_length=64)
    proposer = AdapterProposer.from_folder(head_folder(tmp_path, adapter, target, draft, seed=2), target, draft=draft,
                                           state_factory=StaticDecoder(draft, max_length=64))
    for gamma in (2, 5):
        prompt = prompt_for(80 + gamma, vocab=66)
        base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                           state_factory=target_factory)
        out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                                   gamma=gamma, state_factory=target_factory)
        assert out.token_ids == base.token_ids and out.counts.drafted_tokens > 0


def test_vs_needs_a_vlm_target(tmp_path: Path, bare_pair) -> None:
    target, _ = bare_pair
    proposer = AdapterProposer.from_folder(head_folder(tmp_path, "VS", target, None, seed=0, visual_size=16), target)
    with pytest.raises(ConfigError, match="target's visual tokens"):
        speculative_generate(target, proposer, prompt_ids=prompt_for(1, vocab=66), eos_token_ids=[EOS], max_new_tokens=6)


class TruthfulB1(B1Head):
    """A B1 whose estimate of f_t is the target's true feature: the target run teacher-forced on
    the prompt and the head's tokens (kept in the cache's ``keys`` as ids, so ``truncate`` and the
    value semantics of caches hold). Every previous feature it is given is checked against the
    truth: the real ones the proposer feeds and, along a chain, its own (exact) estimates."""

    def __init__(self, config: HeadConfig, target: LanguageModel, prompt: list[int]) -> None:
        super().__init__(config, target.embed_tokens, target.lm_head)
        self.lm, self.prompt = target, prompt
        self.checked = 0

    def _truth(self, ids: list[int]) -> torch.Tensor:
        """Final hidden states of prompt[:-1] + ids, at the positions of ids: [len(ids), H]."""
        sequence = torch.tensor([self.prompt[:-1] + ids])
        return self.lm.body(input_ids=sequence).last_hidden_state[0, len(self.prompt) - 1:]

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        held = [] if cache.keys is None else cache.keys[0, 0, :, 0].long().tolist()
        ids = held + inputs.token_ids[0].tolist()
        truth = self._truth(ids)
        k = inputs.token_ids.shape[1]
        start = len(held)
        expected = torch.cat([torch.zeros_like(truth[:1]), truth[:-1]])[start:start + k]
        torch.testing.assert_close(inputs.previous_features[0], expected, rtol=1e-4, atol=1e-4)
        self.checked += k
        keys = torch.tensor(ids, dtype=torch.float32)[None, None, :, None]
        return truth[start:][None], HeadCache(length=len(ids), keys=keys, values=keys)


@pytest.mark.parametrize("parallel", [False, True])
def test_a_head_predicting_the_true_feature_is_accepted(bare_pair, parallel: bool) -> None:
    """The proposer hands the head the right rows: the true feature gives acceptance near 1."""
    target, _ = bare_pair
    accepted = drafted = checked = 0
    for seed in range(3):
        prompt = prompt_for(60 + seed, vocab=66)
        head = TruthfulB1(small_config(target, None), target, prompt)
        proposer = AdapterProposer(head)
        base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=24)
        out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=24,
                                   gamma=4, parallel_prefill=parallel)
        assert out.token_ids == base.token_ids
        accepted, drafted = accepted + out.counts.accepted_tokens, drafted + out.counts.drafted_tokens
        checked += head.checked
    assert drafted >= 30 and accepted / drafted > 0.9, (accepted, drafted)
    assert checked > drafted  # the features were checked, committed and drafted ones


def test_heads_that_read_the_draft_refuse_a_missing_draft(tmp_path: Path, bare_pair) -> None:
    target, draft = bare_pair
    folder = head_folder(tmp_path / "l1", "L1", target, draft, seed=0)
    with pytest.raises(ConfigError, match="reads a draft model"):
        AdapterProposer.from_folder(folder, target)
    other = tiny_lm(3, 66, hidden=48)
    with pytest.raises(ConfigError, match="draft_hidden_size=32.*48"):
        AdapterProposer.from_folder(folder, target, draft=other)


# ----------------------------------------------------------------------------- sampling: distribution-exact

VOCAB = 8
PROMPT = [1, 5, 3, 7, 4]
RUNS = {"B1": 1500, "TokenAdapter": 1000}  # power against a 5% leak: 1.0 for each (B1: 0.85 at 1000 runs)


@pytest.fixture(scope="module")
def sharp_pair() -> tuple[LanguageModel, LanguageModel]:
    """Tiny models with scaled LM heads: the target's p and the heads' q peaked and far apart."""
    target, draft = tiny_lm(20, VOCAB), tiny_lm(21, VOCAB, layers=1)
    with torch.no_grad():
        target.lm_head.weight.mul_(40)
        draft.lm_head.weight.mul_(40)
    return target, draft


def target_joint(lm: LanguageModel, sampling: SamplingConfig) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """p(t0, t1) [V*V]; also p(t0) and the final hidden state of the prompt's last position."""
    with torch.inference_mode():
        pre = prefill(lm, lm.embed_tokens(torch.tensor([PROMPT])))
        p0 = probabilities(pre.logits, sampling).double()
        joint = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
        for t0 in range(VOCAB):
            step = pre.state.extend(token_ids=[t0])
            joint[t0] = p0[t0] * probabilities(step.logits[-1], sampling).double()
            pre.state.rollback(len(PROMPT))
    return joint.flatten().numpy(), p0, pre.hidden


def drafted_joint(proposer: AdapterProposer, target: LanguageModel, draft: LanguageModel, sampling: SamplingConfig,
                  p0: torch.Tensor, f0: torch.Tensor) -> np.ndarray:
    """The joint the drafts are drawn from, from the head directly: B1 drafts only t1 (t0 is the
    target's: p(t0) q(t1 | t0)); the TokenAdapter drafts both (q(t0) q(t1 | t0))."""
    head = proposer.head
    joint = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    with torch.inference_mode():
        if head.name == "B1":
            for t0 in range(VOCAB):
                inputs = HeadInputs(torch.tensor([[PROMPT[-1], t0]]), torch.stack([torch.zeros_like(f0), f0])[None])
                out, _ = head.extend(head.start(), inputs)
                joint[t0] = p0[t0] * probabilities(out.logits[0, -1], sampling).double()
        else:
            states = draft.body(input_ids=torch.tensor([PROMPT])).last_hidden_state[0, -1]
            q0 = probabilities(head.extend(head.start(), HeadInputs(torch.tensor([[PROMPT[-1]]]),
                                                                    draft_logits=draft.lm_head(states)[None, None]))[0].logits[0, -1], sampling)
            for t0 in range(VOCAB):
                d1 = draft.body(input_ids=torch.tensor([PROMPT + [t0]])).last_hidden_state[0, -1]
                out, _ = head.extend(head.start(), HeadInputs(torch.tensor([[t0]]), draft_logits=draft.lm_head(d1)[None, None]))
                joint[t0] = q0[t0].double() * probabilities(out.logits[0, -1], sampling).double()
    return joint.flatten().numpy()


@pytest.mark.parametrize(("adapter", "temperature", "top_p", "gamma"),
                         [("B1", 1.0, 1.0, 2), ("TokenAdapter", 1.5, 0.95, 3)])
def test_sampling_keeps_the_target_distribution(tmp_path: Path, sharp_pair, adapter: str, temperature: float,
                                                top_p: float, gamma: int) -> None:
    """The first two tokens over N seeded runs against the target's exact joint (G-test, level
    0.001). Power, computed: a 5% leak of the drafts' own joint (0.95 p + 0.05 q) is rejected in
    at least 95% of Monte Carlo repetitions of the same test at this N."""
    target, draft = sharp_pair
    folder = head_folder(tmp_path / adapter, adapter, target, draft, seed=3)
    proposer = AdapterProposer.from_folder(folder, target, draft=draft)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p)
    p, p0, f0 = target_joint(target, sampling)
    q = drafted_joint(proposer, target, draft, sampling, p0, f0)
    n_runs = RUNS[adapter]
    assert power(p, 0.95 * p + 0.05 * q, n_runs) >= 0.95
    counts = np.zeros(VOCAB * VOCAB)
    accepted = 0
    for seed in range(n_runs):
        # three tokens, the first two counted: B1 drafts from position 1 on, so t1 is drafted (t0 is the prefill's)
        out = speculative_generate(target, proposer, prompt_ids=PROMPT, eos_token_ids=[], max_new_tokens=3, gamma=gamma,
                                   sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed))
        t0, t1 = out.token_ids[:2]
        counts[t0 * VOCAB + t1] += 1
        accepted += out.counts.accepted_tokens
    drafted_per_run = 1 if adapter == "B1" else 2
    assert 0 < accepted < n_runs * drafted_per_run  # both acceptance and rejection paths ran
    assert g_test_pvalue(counts, p) > LEVEL
    assert g_test_pvalue(counts, q) < LEVEL  # the drafts' own joint is clearly rejected


# ----------------------------------------------------------------------------- the tiny VLM pair


@pytest.fixture(scope="module")
def vlm_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evspec.data.synth.builder import SynthConfig, build_dataset

    root = tmp_path_factory.mktemp("adapter-data") / "data"
    build_dataset(root, SynthConfig(clips=2, size=(160, 120), seed=11))
    return root


@pytest.fixture(scope="module")
def vlm_pair():
    from evspec.models.registry import load_model

    return load_model("tiny-videollava"), load_model("tiny-eventgpt")


def vlm_head_folder(folder: Path, adapter: str, target, draft, seed: int) -> Path:
    """An untrained head for the tiny pair, sized as align train sizes it (visual width from the
    field the head reads: the event model's features for EC, the target's visual tokens for VS)."""
    visual = {"draft_visual": draft, "target_visual": target}.get(ADAPTERS[adapter].visual_field)
    return head_folder(folder, adapter, target.language_model, draft.language_model, seed=seed,
                       visual_size=visual.language_model.hidden_size if visual is not None else 0)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_every_head_is_lossless_on_the_tiny_vlms(tmp_path: Path, vlm_dataset: Path, vlm_pair, adapter: str) -> None:
    """Greedy: token-identical to the target alone, gamma 1-8 over two samples and two head seeds,
    sequential and (every other run) parallel prefill; one sampled run checks the q rows' shape."""
    from evspec.data.dataset import load_dataset

    target, draft = vlm_pair
    samples = load_dataset(vlm_dataset)
    for seed in range(2):
        proposer = AdapterProposer.from_folder(vlm_head_folder(tmp_path / str(seed), adapter, target, draft, seed),
                                               target, draft=draft)
        for gamma in range(1 + seed, 9, 2):
            sample = samples[gamma % len(samples)]
            result = compare(target, proposer, sample=sample, gamma=gamma, max_new_tokens=MAX_NEW,
                             parallel_prefill=gamma % 4 == 1, with_generate=False, with_draft_alone=False)
            assert result.exact, (adapter, seed, gamma, result.first_divergence)
            assert result.spec.counts.drafted_tokens > 0
    sampled = speculative_generate(target, proposer, sample=samples[0], gamma=3, max_new_tokens=MAX_NEW,
                                   sampling=SamplingConfig(temperature=0.8, top_p=0.9, seed=1))
    assert sampled.counts.drafted_tokens > 0 and len(sampled.token_ids) > 0


def test_vs_reads_the_targets_own_visual_tokens(tmp_path: Path, vlm_dataset: Path, vlm_pair, monkeypatch) -> None:
    """VS is conditioned on exactly what the target's encode gave, without a second encode."""
    from evspec.data.dataset import load_dataset

    target, draft = vlm_pair
    sample = load_dataset(vlm_dataset)[0]
    proposer = AdapterProposer.from_folder(vlm_head_folder(tmp_path, "VS", target, draft, 0), target)
    seen: list[torch.Tensor] = []
    start = proposer.head.start
    monkeypatch.setattr(proposer.head, "start", lambda visual=None, mask=None: (seen.append(visual), start(visual, mask))[1])
    encodes = []
    encode = target.encode
    monkeypatch.setattr(target, "encode", lambda prepared: (encodes.append(1), encode(prepared))[1])
    speculative_generate(target, proposer, sample=sample, gamma=3, max_new_tokens=8)
    assert len(encodes) == 1 and len(seen) == 1
    prepared = target.preprocess(target.load(sample), sample.query)
    torch.testing.assert_close(seen[0][0], encode(prepared).embeds)


def test_ec_encodes_the_events_once_per_sample(tmp_path: Path, vlm_dataset: Path, vlm_pair, monkeypatch) -> None:
    from evspec.data.dataset import load_dataset

    target, draft = vlm_pair
    samples = load_dataset(vlm_dataset)
    proposer = AdapterProposer.from_folder(vlm_head_folder(tmp_path, "EC", target, draft, 0), target, draft=draft)
    assert proposer.track is None  # EC needs the event model's encoder, not its language model
    calls = []
    encode = draft.encode
    monkeypatch.setattr(draft, "encode", lambda prepared: (calls.append(1), encode(prepared))[1])
    for sample in samples:
        speculative_generate(target, proposer, sample=sample, gamma=4, max_new_tokens=8, parallel_prefill=True)
    assert len(calls) == len(samples)


# ----------------------------------------------------------------------------- RUN folders and the report


def test_a_folder_that_is_not_a_head_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    for folder, message in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "not a head"),
                            (tmp_path / "model", "not a head")):
        with pytest.raises(ModelError, match=message) as error:
            read_adapter_run(folder)
        assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_a_run_folder_names_its_head_draft_and_simulated_acceptance(tmp_path: Path, bare_pair) -> None:
    from evspec.align.proposer import adapter_model_names, adapter_summary

    target, draft = bare_pair
    run = tmp_path / "run"
    head_folder(run / "head", "L5F", target, draft, seed=0)
    (run / "config.json").write_text(json.dumps({"identity": {"target": "tiny-videollava", "store_identity": {
        "target": "tiny-videollava", "draft": "tiny-eventgpt"}}}))
    simulated = {"label": "simulated (offline): ...", "rounds": 9, "acceptance_rate": {"1": 0.5, "3": 0.25},
                 "mean_acceptance_length": {"1": 1.5, "3": 1.75}}
    rows = [{"step": 1, "loss": 2.0}, {"step": 10, "eval": {"loss": 1.0, "simulated": simulated}}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    read = read_adapter_run(run)
    assert (read.head_folder, read.adapter, read.draft_model, read.target_model) == (
        run / "head", "L5F", "tiny-eventgpt", "tiny-videollava")
    assert adapter_model_names(f"adapter:{run}") == ["tiny-eventgpt"]
    assert simulated_acceptance(read, 3) == {
        "label": "simulated (offline)", "note": simulated["label"], "source": str(run / "metrics.jsonl"), "step": 10,
        "gamma": 3, "acceptance_rate": 0.25, "mean_acceptance_length": 1.75}
    assert simulated_acceptance(read, 4) is None  # not simulated at that gamma
    # a run of today's simulation also carries the replay of the live loop's rounds
    replayed = {**simulated, "replay": {"label": "replay", "acceptance_rate": {"3": 0.2}, "mean_acceptance_length": {"3": 1.6}}}
    (run / "metrics.jsonl").write_text(json.dumps({"step": 12, "eval": {"simulated": replayed}}) + "\n")
    assert simulated_acceptance(read, 3)["replay"] == {"note": "replay", "acceptance_rate": 0.2, "mean_acceptance_length": 1.6}
    assert "replay" not in simulated_acceptance(read, 1)  # no replay at that gamma
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    assert adapter_summary(f"adapter:{run}", 3)["simulated_acceptance"]["acceptance_rate"] == 0.25
    # a bare head folder: B1 reads no draft; L5F needs draft_model in its config.json
    assert adapter_model_names(f"adapter:{head_folder(tmp_path / 'b1', 'B1', target, None, seed=0)}") == []
    with pytest.raises(ConfigError, match="names it"):
        adapter_model_names(f"adapter:{run / 'head'}")


def test_the_report_shows_simulated_and_live_acceptance_labelled() -> None:
    from evspec.spec.report import simulated_vs_live

    summary = {"counts": {"acceptance_rate": 0.4, "mean_acceptance_length": 2.2}, "n_samples": 3,
               "config": {"gamma": 5, "adaptive_gamma": False, "temperature": 0.0},
               "simulated_acceptance": {"step": 30, "acceptance_rate": 0.45, "mean_acceptance_length": 2.5,
                                        "note": "simulated (offline): greedy chains", "source": "RUN/metrics.jsonl"}}
    text = "\n".join(simulated_vs_live(summary))
    assert "| simulated (offline): held-out store rows, step 30 | 0.450 | 2.500 |" in text
    assert "| live: this run, 3 samples, temperature 0.0 | 0.400 | 2.200 |" in text
    replayed = {**summary["simulated_acceptance"], "replay": {"acceptance_rate": 0.41, "mean_acceptance_length": 2.3}}
    text = "\n".join(simulated_vs_live({**summary, "simulated_acceptance": replayed}))
    assert "| simulated (offline), replaying the live loop's rounds: the same rows | 0.410 | 2.300 |" in text
    assert "none recorded" in "\n".join(simulated_vs_live({**summary, "simulated_acceptance": None}))
    assert simulated_vs_live({k: v for k, v in summary.items() if k != "simulated_acceptance"}) == []


# ----------------------------------------------------------------------------- evspec spec --draft adapter:RUN


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, vlm_dataset: Path) -> Path:
    """A real ``evspec align train`` run on the tiny pair: a store extracted from the dataset, an
    L5F head (it reads the draft model, which the run names through its store) trained a few steps."""
    from evspec.align.extract import ExtractConfig, extract_store
    from evspec.align.train import AlignTrainConfig, run_align_training
    from evspec.training.loop import LoopConfig

    root = tmp_path_factory.mktemp("adapter-run")
    extract_store(ExtractConfig(target="tiny-videollava", draft="tiny-eventgpt", dataset=str(vlm_dataset),
                                max_new_tokens=12), root / "store", device="cpu")
    loop = LoopConfig(steps=4, batch_size=1, lr=1e-3, warmup_steps=1, eval_every=4, checkpoint_every=4, log_every=1)
    config = AlignTrainConfig(store=str(root / "store"), adapter="L5F", loop=loop,
                              head={"num_heads": 4, "ffn_size": 64}, holdout=0.5)
    run_align_training(config, root / "run", device="cpu")
    return root / "run"


def test_spec_cli_drafts_with_an_adapter_run(tmp_path: Path, vlm_dataset: Path, trained_run: Path, capsys) -> None:
    from evspec.cli import main

    out = tmp_path / "spec"
    args = ["spec", "--target", "tiny-videollava", "--draft", f"adapter:{trained_run}", "--dataset", str(vlm_dataset),
            "--gamma", "3", "--max-new-tokens", "8", "--warmup", "0", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["error"] is None and r["lossless"] is True for r in rows)
    assert sum(r["counts"]["drafted_tokens"] for r in rows) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter"]["adapter"] == "L5F" and summary["adapter"]["draft_model"] == "tiny-eventgpt"
    simulated = summary["simulated_acceptance"]
    assert simulated["gamma"] == 3 and 0 <= simulated["acceptance_rate"] <= 1
    report = (out / "report.md").read_text()
    assert "## Acceptance: simulated (offline) vs live" in report
    assert "| simulated (offline): held-out store rows, step 4 |" in report and "| live: this run, 2 samples" in report


def test_spec_cli_refuses_a_run_that_is_not_a_head_in_one_line(tmp_path: Path, vlm_dataset: Path, capsys) -> None:
    from evspec.cli import main

    (tmp_path / "notarun").mkdir()
    args = ["spec", "--target", "tiny-videollava", "--draft", f"adapter:{tmp_path / 'notarun'}", "--dataset",
            str(vlm_dataset), "--out", str(tmp_path / "spec")]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notarun" in err and "not a head" in err
    assert not (tmp_path / "spec" / "records.jsonl").exists()


def test_bench_cli_decodes_with_an_adapter_run(tmp_path: Path, vlm_dataset: Path, trained_run: Path, capsys) -> None:
    """``evspec bench --draft adapter:RUN`` goes through the same proposer builder."""
    from evspec.cli import main

    out = tmp_path / "bench"
    args = ["bench", "--model", "tiny-videollava", "--draft", f"adapter:{trained_run}", "--dataset", str(vlm_dataset),
            "--gamma", "2", "--max-new-tokens", "6", "--warmup", "0", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(not r.get("error") for r in rows)
    assert all(r["decoder"] == f"spec:adapter:{trained_run}" for r in rows), rows[0].get("decoder")


def test_a_run_over_other_target_weights_warns_and_still_drafts(trained_run: Path) -> None:
    """A head loads over any target of its shapes; the run's recorded target_weights_sha256 tells a
    target whose weights changed since (a rebuilt demo pair, a fine-tune) in one warning."""
    import warnings

    from evspec.errors import EvspecWarning
    from evspec.models.registry import load_model

    target, draft = load_model("tiny-videollava"), load_model("tiny-eventgpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvspecWarning)
        AdapterProposer.from_folder(trained_run, target, draft=draft)  # the weights it trained over
    with torch.no_grad():
        target.language_model.lm_head.weight[0, 0] += 1e-3
    with pytest.warns(EvspecWarning, match="trained over other target weights"):
        proposer = AdapterProposer.from_folder(trained_run, target, draft=draft)
    assert proposer.head.name == "L5F"



def test_a_run_over_other_draft_weights_warns_and_still_drafts(trained_run: Path) -> None:
    """L5F reads the draft's hidden states: the run records the draft's weights too, and a rebuilt
    draft (the demo pair's event model retrained, say) is told in one warning."""
    from evspec.errors import EvspecWarning
    from evspec.models.registry import load_model

    identity = json.loads((trained_run / "config.json").read_text())["identity"]
    assert len(identity["draft_weights_sha256"]) == 64
    target, draft = load_model("tiny-videollava"), load_model("tiny-eventgpt")
    with torch.no_grad():
        next(draft.trainable_module.parameters()).view(-1)[0] += 1e-3
    with pytest.warns(EvspecWarning, match="read another draft model") as caught:
        proposer = AdapterProposer.from_folder(trained_run, target, draft=draft)
    assert not any("target weights" in str(w.message) for w in caught)
    assert proposer.head.name == "L5F"
    from evspec.align.heads import ADAPTERS  # a head of the target alone records no draft: B1 reads none, EC its events

    assert not ADAPTERS["B1"].reads_draft_model() and ADAPTERS["EC"].reads_draft_model()
