"""Tiny checkpoints: cached, atomic, deterministic; one shared base vocabulary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evspec.errors import ModelError
from evspec.models import tiny
from evspec.models.tokenizer import (
    EVENT_TOKEN_INDEX,
    build_base_tokenizer,
    load_tokenizer,
    tokenizer_event_token,
)

SENTENCE = "The red ring moves slowly down and to the right, the cyan square moves quickly downward."


def test_cached_folder_is_reused(tiny_cache: str) -> None:
    first = tiny.tiny_checkpoint("tiny-llava")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny.tiny_checkpoint("tiny-llava") == first == Path(tiny_cache) / "tiny" / "tiny-llava-v1"
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_builds_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders = []
    for run in ("a", "b"):
        monkeypatch.setenv("EVSPEC_CACHE", str(tmp_path / run))
        folders.append(tiny.tiny_checkpoint("tiny-videollava"))
    names = sorted(p.name for p in folders[0].iterdir())
    assert names == sorted(p.name for p in folders[1].iterdir())
    for name in names:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name


def test_losing_a_build_race_keeps_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSPEC_CACHE", str(tmp_path))
    final = tmp_path / "tiny" / "tiny-llava-v1"

    def racing_build(folder: Path) -> None:
        final.mkdir(parents=True)  # another worker finishes first
        (final / "config.json").write_text('{"winner": true}')
        (folder / "config.json").write_text('{"winner": false}')

    monkeypatch.setitem(tiny.BUILDERS, "tiny-llava", racing_build)
    assert tiny.tiny_checkpoint("tiny-llava") == final
    assert (final / "config.json").read_text() == '{"winner": true}'
    assert [p.name for p in final.parent.iterdir()] == ["tiny-llava-v1"]


def test_a_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSPEC_CACHE", str(tmp_path))

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setitem(tiny.BUILDERS, "tiny-llava", broken)
    with pytest.raises(OSError, match="disk full"):
        tiny.tiny_checkpoint("tiny-llava")
    assert os.listdir(tmp_path / "tiny") == []


def test_unknown_tiny_name() -> None:
    with pytest.raises(ModelError, match="unknown tiny model"):
        tiny.tiny_checkpoint("tiny-gpt")


def test_families_share_the_base_vocabulary(tiny_cache: str) -> None:
    tokenizers = {n: load_tokenizer(tiny.tiny_checkpoint(n)) for n in tiny.BUILDERS}
    ids = {n: t(SENTENCE).input_ids for n, t in tokenizers.items()}
    assert ids["tiny-eventgpt"] == ids["tiny-videollava"] == ids["tiny-llava"]
    base = len(build_base_tokenizer())
    assert tokenizers["tiny-videollava"].convert_tokens_to_ids(["<image>", "<video>", "<pad>"]) == [base, base + 1, base + 2]
    assert tokenizers["tiny-llava"].convert_tokens_to_ids(["<image>", "<pad>"]) == [base, base + 1]
    assert tokenizers["tiny-eventgpt"].convert_tokens_to_ids(["<ev_patch>", "<ev_start>", "<ev_end>"]) == [base, base + 1, base + 2]
    assert tokenizers["tiny-eventgpt"].decode(ids["tiny-eventgpt"], skip_special_tokens=True) == SENTENCE


def test_tokenizer_event_token_keeps_one_bos_and_marks_the_event(tiny_cache: str) -> None:
    tokenizer = load_tokenizer(tiny.tiny_checkpoint("tiny-eventgpt"))
    ids = tokenizer_event_token("USER: <ev_start><event><ev_end>\nWhat moves? ASSISTANT:", tokenizer)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(EVENT_TOKEN_INDEX) == 1
    at = ids.index(EVENT_TOKEN_INDEX)
    assert tokenizer.convert_ids_to_tokens(ids[at - 1 : at + 2 : 2]) == ["<ev_start>", "<ev_end>"]
    assert tokenizer_event_token("no placeholder", tokenizer) == tokenizer("no placeholder").input_ids
    two = tokenizer_event_token("<event> and <event>", tokenizer)
    assert two.count(EVENT_TOKEN_INDEX) == 2 and two[:2] == [tokenizer.bos_token_id, EVENT_TOKEN_INDEX]
