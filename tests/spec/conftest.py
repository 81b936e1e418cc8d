"""Tiny language models and tokenizers for the speculative-decoding tests (CPU, float32).

The models are random ``LlamaForCausalLM`` bodies (so every forward is the real transformers
path); the tokenizers are small BPE models trained here in milliseconds, so the same-tokenizer
and cross-tokenizer bridges are exercised on real ``PreTrainedTokenizerFast`` objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from evspec.runtime.decode import LanguageModel

EOS = 2
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "red", "green", "blue", "circle", "square", "moves", "left", "right", "up", "down", "stands", "still", "camera", "scene"]
CORPUS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(8)) + "." for i in range(60)]
CORPUS.append("0123456789 . , ? !")


def build_tokenizer(vocab_size: int, extra_special: tuple[str, ...] = ()):
    """A Metaspace BPE tokenizer (<unk>=0, <s>=1, </s>=2) trained on a fixed corpus: deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789.,?! "), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if extra_special:
        wrapped.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return wrapped


def tiny_lm(seed: int, vocab_size: int, *, layers: int = 2, hidden: int = 32, context: int = 256,
            dtype: torch.dtype = torch.float32) -> LanguageModel:
    """A random tiny LLaMA as an evspec LanguageModel (seeded weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=None,
    )
    model = LlamaForCausalLM(config).to(dtype).eval()
    return LanguageModel.from_causal_lm(model)


def with_context(lm: LanguageModel, context: int) -> LanguageModel:
    """The same weights with a shorter context (prompts that end at the context limit)."""
    return dataclasses.replace(lm, context_length=context)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices are fastest on one thread and immune to other processes' load; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def target_tok():
    return build_tokenizer(64, ("<image>", "<video>"))


@pytest.fixture(scope="session")
def same_draft_tok():
    """Same ordinary vocabulary as the target's, with its own added token (EventGPT-like)."""
    return build_tokenizer(64, ("<ev_patch>",))


@pytest.fixture(scope="session")
def cross_draft_tok():
    """A different BPE vocabulary: ordinary ids disagree with the target's."""
    return build_tokenizer(96)


@pytest.fixture(scope="session")
def target_lm(target_tok) -> LanguageModel:
    return tiny_lm(0, len(target_tok) + 2)  # a padded LM head, like Video-LLaVA's 32064


@pytest.fixture(scope="session")
def same_draft_lm(same_draft_tok) -> LanguageModel:
    return tiny_lm(1, len(same_draft_tok), layers=1)


@pytest.fixture(scope="session")
def cross_draft_lm(cross_draft_tok) -> LanguageModel:
    return tiny_lm(2, len(cross_draft_tok), layers=1)
