"""Tokenizers: the tiny models' shared LLaMA-style vocabulary, and EventGPT's prompt tokenisation.

The tiny checkpoints need a *real* tokenizer (so the text path is the one a real checkpoint takes),
built offline: a small SentencePiece BPE model with byte fallback, like LLaMA's, trained on a fixed
English corpus that covers the synthetic QA vocabulary and the families' prompt templates, then
converted by transformers into its ``LlamaTokenizer``. Training is single-threaded on a fixed
corpus, hence deterministic; tiny-eventgpt, tiny-videollava and tiny-llava all start from this one
base vocabulary (as the real models all start from LLaMA's), so ordinary token ids agree between
them and only the families' added special tokens differ.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from evspec.errors import ModelError

BASE_VOCAB_SIZE = 900
"""Pieces in the tiny base vocabulary, including <unk>, <s>, </s> and the 256 byte pieces."""

EVENT_TOKEN_INDEX = -200
"""EventGPT's placeholder id in ``input_ids``, replaced by the event features when splicing."""

EVENT_TOKEN = "<event>"

# The synthetic scenes' words (evspec.data.synth) and some plain English around them. Fixed here,
# not imported, so the tiny vocabulary (and every tiny checkpoint built from it) never drifts.
_SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "ball", "box", "object", "shape")
_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "cyan", "pink", "black", "grey")
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
_NUMBERS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "seven", "eight", "nine", "ten")
_TEMPLATES = (
    (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <event>\n{q} ASSISTANT:"
    ),
    "USER: <video>\n{q} ASSISTANT:",
    "USER: <image>\n{q} ASSISTANT:",
)
_QUESTIONS = (
    "What objects are in the scene?",
    "Which way does each object move?",
    "How many objects are moving?",
    "Describe what happens in the scene.",
    "Which direction does the {c} {s} move?",
    "Is the camera moving?",
    "What colour is the {s} that stands still?",
    "Where is the {c} {s}?",
)
_ANSWERS = (
    "The scene shows a {c} {s} and an {c2} {s2}.",
    "The {c} {s} moves slowly {w} and the {c2} {s2} stands still.",
    "{n} objects are moving. No object is moving. One object is moving.",
    "A {c} {s} moves quickly {w}. The camera pans {w}.",
    "Nothing moves, so no object is visible. No motion is visible.",
    "The {c} {s} moves {d}; it is {n} times faster. Yes. No. 0 1 2 3 4 5 6 7 8 9 10 20 100 ms, s, %.",
)
_DIRECTION_WORDS = (
    "to the right", "up and to the right", "upward", "up and to the left", "to the left",
    "down and to the left", "downward", "down and to the right",
)


def training_corpus() -> list[str]:
    """The fixed sentences the tiny SentencePiece model is trained on (deterministic order)."""
    lines: list[str] = []
    combos = itertools.product(_COLOURS, _SHAPES, _DIRECTIONS)
    for i, (c, s, d) in enumerate(combos):
        c2, s2, n = _COLOURS[(i + 3) % len(_COLOURS)], _SHAPES[(i + 5) % len(_SHAPES)], _NUMBERS[i % len(_NUMBERS)]
        q = _QUESTIONS[i % len(_QUESTIONS)].format(c=c, s=s)
        w = _DIRECTION_WORDS[i % len(_DIRECTION_WORDS)]
        a = _ANSWERS[i % len(_ANSWERS)].format(c=c, s=s, d=d, n=n, c2=c2, s2=s2, w=w)
        lines.append(_TEMPLATES[i % len(_TEMPLATES)].format(q=q) + " " + a)
    return lines


def train_sentencepiece(vocab_size: int = BASE_VOCAB_SIZE) -> bytes:
    """A serialized SentencePiece BPE model in LLaMA's style (byte fallback, digits split,
    <unk>=0, <s>=1, </s>=2). Single-threaded on a fixed corpus: the same bytes every time."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_corpus()), model_writer=buffer, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
        num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", hard_vocab_limit=True,
        minloglevel=2,
    )
    return buffer.getvalue()


def build_base_tokenizer(vocab_size: int = BASE_VOCAB_SIZE):  # -> transformers.LlamaTokenizer
    """transformers' ``LlamaTokenizer`` converted from :func:`train_sentencepiece`'s model: adds
    BOS, not EOS, like LLaMA's. Callers add their family's special tokens and ``save_pretrained``."""
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size))
        tokenizer = LlamaTokenizer.from_pretrained(
            tmp, legacy=False, add_bos_token=True, add_eos_token=False, trust_remote_code=False
        )
    if tokenizer.bos_token_id != 1 or tokenizer.eos_token_id != 2:
        raise ModelError(f"tiny tokenizer has bos={tokenizer.bos_token_id} eos={tokenizer.eos_token_id}, expected 1 and 2")
    return tokenizer


def legacy_key(folder: str | Path) -> bool | None:
    """The ``legacy`` value of a folder's ``tokenizer_config.json``; None when the key (or the
    file) is absent. A LLaMA tokenizer's ``legacy`` decides whether text right after a special
    token gets SentencePiece's dummy-prefix piece "\u2581" (legacy=True) or not."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelError(f"{path}: not a readable JSON tokenizer config ({type(error).__name__}: {error})") from None
    value = raw.get("legacy") if isinstance(raw, dict) else None
    if value is not None and not isinstance(value, bool):
        raise ModelError(f"{path}: 'legacy' must be true or false, got {value!r}")
    return value


def load_tokenizer(folder: str | Path, *, legacy_if_absent: bool | None = None):  # -> PreTrainedTokenizerBase
    """The tokenizer saved in a checkpoint folder (``tokenizer.json`` or LLaMA's ``tokenizer.model``).

    ``legacy_if_absent``: the ``legacy`` value to use when ``tokenizer_config.json`` has no
    ``legacy`` key. Releases disagree on that default (transformers 4.37, which upstream EventGPT
    pins, takes True; transformers 5 takes False), so a family that must tokenize as its upstream
    did states it instead of inheriting whatever this transformers does. None: this transformers'."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ModelError(f"{folder}: no tokenizer files (tokenizer.json or tokenizer.model)")
    kwargs = {}
    if legacy_if_absent is not None and legacy_key(folder) is None:
        kwargs["legacy"] = legacy_if_absent
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **kwargs)
    except Exception as error:  # the boundary: tokenizers raises bare Exceptions on damaged tokenizer.json
        raise ModelError(f"{folder}: cannot load the tokenizer ({type(error).__name__}: {error})") from None


def tokenizer_event_token(prompt: str, tokenizer, event_token_index: int = EVENT_TOKEN_INDEX) -> list[int]:
    """EventGPT's ``tokenizer_event_token``: split on ``<event>``, tokenize each chunk, keep one
    BOS, put ``event_token_index`` between the chunks."""
    chunks: list[list[int]] = [tokenizer(chunk).input_ids for chunk in prompt.split(EVENT_TOKEN)]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(event_token_index)
        ids.extend(chunk[offset:])
    return ids


def add_special_tokens(tokenizer, tokens: Sequence[str]) -> int:
    """Add ``tokens`` as special tokens (no-op for those already present); returns how many were new."""
    return int(tokenizer.add_tokens(list(tokens), special_tokens=True))
