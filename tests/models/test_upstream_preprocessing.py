"""EventGPT preprocessing as upstream's code does it (XduSyL/EventGPT, common/common.py and its
pinned transformers 4.37.2), stated here as fixtures: chunk sizes, canvas sizes, prompt token ids.

The token ids below were produced by upstream's own path -- transformers 4.37.2's slow
``LlamaTokenizer`` (``use_fast=False``) over the SentencePiece model evspec's tiny checkpoints use,
``<ev_patch>``, ``<ev_start>``, ``<ev_end>`` added as upstream adds them, and upstream's
``tokenizer_event_token`` -- once, in a separate environment, and are written here as data.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from evspec.data.events import EventStream, write_eventgpt_npy
from evspec.data.render import render_eventgpt_frames, render_eventgpt_input
from evspec.errors import ConfigError
from evspec.models.eventgpt import (
    EV_END_TOKEN,
    EV_START_TOKEN,
    EVENT_PATCH_TOKEN,
    UPSTREAM_TOKENIZER_LEGACY,
    EventWindowWarning,
    conv_eventgpt_v1,
    warn_if_long_window,
)
from evspec.models.generation import sampling_settings
from evspec.models.tokenizer import (
    add_special_tokens,
    legacy_key,
    load_tokenizer,
    tokenizer_event_token,
    train_sentencepiece,
)

# (events, frames) -> upstream's chunk sizes: len // N for the first N-1, the rest in the last.
CHUNK_SIZES = {
    (13, 5): [2, 2, 2, 2, 5],
    (9, 5): [1, 1, 1, 1, 5],
    (5, 5): [1, 1, 1, 1, 1],
    (132_268, 5): [26_453, 26_453, 26_453, 26_453, 26_456],  # upstream's sample: 132,268 events
    (7, 3): [2, 2, 3],
}
QUERY = "Which way does the red ball move?"
# Upstream (transformers 4.37.2, tokenizer_config.json without a "legacy" key, hence legacy=True):
# note 839 ("\u2581") right after 902 (<ev_end>).
UPSTREAM_PROMPT_IDS = [
    1, 274, 383, 394, 267, 395, 328, 273, 262, 399, 400, 329, 857, 290, 329, 390, 396, 867, 397, 867, 273, 391,
    393, 311, 270, 328, 882, 842, 398, 857, 302, 861, 839, 901, -200, 902, 839, 869, 433, 516, 434, 270, 535, 483,
    435, 876, 304, 861,
]
# The same tokenizer with "legacy": false in tokenizer_config.json (4.37.2 and transformers 5 agree).
NON_LEGACY_PROMPT_IDS = UPSTREAM_PROMPT_IDS[:36] + UPSTREAM_PROMPT_IDS[37:]
SPIECE_UNDERLINE_ID = 839


def stream_of(n: int, *, size: tuple[int, int] = (640, 480), seed: int = 0, span_us: int = 50_000) -> EventStream:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span_us, n))
    return EventStream.from_arrays(rng.integers(0, size[0], n), rng.integers(0, size[1], n), t,
                                   rng.integers(0, 2, n), size)


@pytest.mark.parametrize(("n_events", "n_frames"), list(CHUNK_SIZES))
def test_chunk_sizes_are_upstreams(n_events: int, n_frames: int) -> None:
    s = stream_of(n_events)
    assert [len(c) for c in s.split_count(n_frames, remainder="last")] == CHUNK_SIZES[n_events, n_frames]
    # evspec's array_split rule differs whenever len % N > 1: kept as an option, never the default here
    spread = [len(c) for c in s.split_count(n_frames)]
    assert sum(spread) == n_events and max(spread) - min(spread) <= 1


def test_rendered_frames_use_upstreams_chunks_and_each_chunks_canvas() -> None:
    # 13 events, 5 frames: chunks of 2, 2, 2, 2, 5 events; each frame sized by its own chunk's maxima
    x = [0, 1, 4, 2, 9, 9, 3, 0, 1, 1, 7, 2, 0]
    y = [0, 0, 1, 5, 0, 0, 2, 2, 1, 1, 3, 0, 8]
    s = EventStream.from_arrays(x, y, np.arange(13), [1, 0] * 6 + [1], (640, 480))
    frames = render_eventgpt_frames(s, 5)
    assert [f.shape[:2] for f in frames] == [(1, 2), (6, 5), (1, 10), (3, 4), (9, 8)]
    # the last chunk (5 events) reaches x=7 and y=8 only through its own events
    assert tuple(frames[4][8, 0]) == (255, 0, 0) and tuple(frames[4][3, 7]) == (255, 0, 0)
    assert tuple(frames[4][0, 2]) == (0, 0, 255)  # event 11, p=0
    sensor = render_eventgpt_input(s, 5, "sensor")
    assert {f.shape for f in sensor} == {(480, 640, 3)}
    assert np.array_equal(sensor[4][:9, :8], frames[4])  # same pixels, larger white canvas
    with pytest.raises(ConfigError, match="unknown event canvas 'big'"):
        render_eventgpt_input(s, 5, "big")  # type: ignore[arg-type]


def test_window_of_100_ms_or_more_is_warned_about() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_long_window(99_999, "clip.npy")  # upstream accepts this one
    with pytest.warns(EventWindowWarning, match=r"clip\.npy: event window of 100\.0 ms; upstream EventGPT refuses"):
        warn_if_long_window(100_000, "clip.npy")


def _tokenizer_folder(tmp_path: Path, legacy: bool | None) -> Path:
    folder = tmp_path / f"tok-{legacy}"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(train_sentencepiece())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False}
    if legacy is not None:
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _eventgpt_prompt_ids(folder: Path) -> list[int]:
    tokenizer = load_tokenizer(folder, legacy_if_absent=UPSTREAM_TOKENIZER_LEGACY)
    add_special_tokens(tokenizer, [EVENT_PATCH_TOKEN])
    add_special_tokens(tokenizer, [EV_START_TOKEN, EV_END_TOKEN])
    return tokenizer_event_token(conv_eventgpt_v1(QUERY), tokenizer)


def test_prompt_ids_without_a_legacy_key_are_upstreams(tmp_path: Path) -> None:
    folder = _tokenizer_folder(tmp_path, None)
    assert legacy_key(folder) is None
    assert _eventgpt_prompt_ids(folder) == UPSTREAM_PROMPT_IDS
    # without the explicit default this transformers would tokenize differently (no "\u2581" after <ev_end>)
    plain = load_tokenizer(folder)
    add_special_tokens(plain, [EVENT_PATCH_TOKEN, EV_START_TOKEN, EV_END_TOKEN])
    assert tokenizer_event_token(conv_eventgpt_v1(QUERY), plain) == NON_LEGACY_PROMPT_IDS


@pytest.mark.parametrize(("legacy", "expected"), [(True, UPSTREAM_PROMPT_IDS), (False, NON_LEGACY_PROMPT_IDS)])
def test_an_explicit_legacy_key_is_obeyed(tmp_path: Path, legacy: bool, expected: list[int]) -> None:
    folder = _tokenizer_folder(tmp_path, legacy)
    assert legacy_key(folder) is legacy
    ids = _eventgpt_prompt_ids(folder)
    assert ids == expected
    after_end = ids[ids.index(-200) + 2]
    assert (after_end == SPIECE_UNDERLINE_ID) is legacy


def test_checkpoint_generation_config_maps_to_evspecs_sampler() -> None:
    assert sampling_settings(None) == (0.0, 1.0, [])
    assert sampling_settings({"bos_token_id": 1, "eos_token_id": 2}) == (0.0, 1.0, [])
    # Vicuna's file: samples at temperature 0.9, top_p 0.6; transformers adds top_k=50, evspec cannot
    temperature, top_p, skipped = sampling_settings({"do_sample": True, "temperature": 0.9, "top_p": 0.6,
                                                     "max_length": 4096, "pad_token_id": 0})
    assert (temperature, top_p) == (0.9, 0.6) and skipped == ["top_k (transformers' default 50)"]
    assert sampling_settings({"do_sample": True, "top_k": 0, "repetition_penalty": 1.1})[2] == ["repetition_penalty"]
    assert sampling_settings({"do_sample": False, "num_beams": 4})[:2] == (0.0, 1.0)


# --------------------------------------------------------------------------- through the tiny checkpoint


def test_tiny_eventgpt_loads_with_upstreams_rules(tiny_models, tmp_path: Path) -> None:
    from evspec.data.dataset import load_dataset

    model = tiny_models["eventgpt"]
    info = model.preprocessing()
    assert info["event_canvas"] == "upstream" and info["tokenizer_legacy"] is True
    assert info["checkpoint_generation_config"]["eos_token_id"] == 2  # the checkpoint's file, read
    ids = model.preprocess(_visual(model), QUERY).input_ids[0].tolist()
    assert ids[ids.index(-200) + 2] == model.tokenizer.convert_tokens_to_ids("\u2581")

    # a sample with raw events: rendered from them as upstream does (images listed are not used)
    s = stream_of(13, size=(32, 24), span_us=120_000)
    write_eventgpt_npy(s, tmp_path / "clip.npy")
    (tmp_path / "data.json").write_text(json.dumps([{"id": "c0", "query": QUERY, "event_data": "clip.npy"}]))
    (sample,) = load_dataset(tmp_path / "data.json")
    with pytest.warns(EventWindowWarning):
        frames = model.load(sample).frames
    assert [f.shape for f in frames] == [f.shape for f in render_eventgpt_frames(s, 5)]
    model.event_canvas = "sensor"
    try:
        with pytest.warns(EventWindowWarning):
            # EventGPT .npy files carry no sensor size: the reader takes DSEC's 640x480
            assert {f.shape for f in model.load(sample).frames} == {(480, 640, 3)}
    finally:
        model.event_canvas = "upstream"


def _visual(model):
    from tests.models.conftest import visual_input

    return visual_input(model, seed=0)


# --------------------------------------------------------------------------- the options on the command line


def test_spec_records_the_generation_configs_and_the_event_canvas(tiny_cache, tmp_path: Path) -> None:
    import evspec.run.shared as run_shared
    from evspec.cli import main

    patch = pytest.MonkeyPatch()
    patch.setattr(run_shared, "DEFAULT_SYNTH", {**run_shared.DEFAULT_SYNTH, "clips": 1})
    try:
        data = run_shared.build_default_dataset(tmp_path / "data", run_shared.SilentReporter())
    finally:
        patch.undo()
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EventWindowWarning)  # the synthetic clips last 1 s
        code = main(["spec", "--target", "tiny-videollava", "--draft", "tiny-eventgpt", "--dataset", str(data),
                     "--max-new-tokens", "4", "--warmup", "0", "--event-canvas", "sensor",
                     "--generation-config", "checkpoint", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    generation = config["config"]["generation"]
    assert generation["source"] == "checkpoint"
    files = generation["checkpoint_generation_config"]
    assert set(files) == {"tiny-videollava", "tiny-eventgpt"} and files["tiny-eventgpt"]["eos_token_id"] == 2
    assert generation["applied"] == {"temperature": 0.0, "top_p": 1.0}  # no do_sample in the file: greedy
    assert config["config"]["event_canvas"] == "sensor" and config["identity"]["event_canvas"] == "sensor"
    assert "--event-canvas sensor --generation-config checkpoint" in config["command"]


def test_unknown_option_values_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.cli import main

    assert main(["spec", "--event-canvas", "huge", "--max-new-tokens", "2"]) == 1
    assert "unknown event canvas 'huge': use upstream or sensor" in capsys.readouterr().err
    assert main(["bench", "--generation-config", "mine"]) == 1
    assert "unknown --generation-config 'mine': use evspec or checkpoint" in capsys.readouterr().err


def test_checkpoint_sampling_must_agree_across_a_runs_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from evspec.bench.runner import BenchConfig
    from evspec.run.shared import generation_records

    files = {"a": {"do_sample": True, "temperature": 0.6, "top_p": 0.9}, "b": None}
    monkeypatch.setattr("evspec.models.generation.checkpoint_generation_configs", lambda names, strict=True: {n: files[n] for n in names})
    with pytest.raises(ConfigError, match="generation_config.json files disagree"):
        generation_records(BenchConfig(models=("a", "b"), generation_config="checkpoint"), ["a", "b"])
    config, record = generation_records(BenchConfig(models=("a",), generation_config="checkpoint"), ["a"])
    assert (config.temperature, config.top_p) == (0.6, 0.9)
    assert record["not_applied"] == {"a": ["top_k (transformers' default 50)"]}


def test_the_cli_shows_the_window_warning_as_one_line(tiny_cache, capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.cli import main

    assert main(["verify", "tiny-eventgpt", "--max-samples", "1", "--max-new-tokens", "2", "--no-hooks"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "upstream EventGPT refuses" in line]
    assert err and all(line.startswith("warning: ") and "ms; upstream EventGPT refuses windows of 100 ms" in line
                       for line in err)


def test_the_sensor_canvas_is_the_sensor_the_dataset_row_records(tiny_cache, tmp_path: Path) -> None:
    """A 160x120 synthetic clip is drawn on a 160x120 canvas, not on the .npy reader's default
    640x480 (DSEC's), where its events would fill a corner; without a recorded size the default stays."""
    import dataclasses

    from evspec.data.dataset import load_dataset
    from evspec.data.synth.builder import SynthConfig, build_dataset
    from evspec.models.registry import load_model

    build_dataset(tmp_path / "d", SynthConfig(clips=1, size=(160, 120), seed=3))
    sample = load_dataset(tmp_path / "d")[0]
    assert sample.sensor_size == (160, 120)
    model = load_model("tiny-eventgpt", event_canvas="sensor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EventWindowWarning)  # the synthetic clips last 1 s
        frames = model.load(sample).frames
        assert {f.shape for f in frames} == {(120, 160, 3)}
        unrecorded = dataclasses.replace(sample, scene=None)
        assert unrecorded.sensor_size is None
        assert {f.shape for f in model.load(unrecorded).frames} == {(480, 640, 3)}


def test_event_frames_are_processed_as_upstream_does_one_at_a_time(tiny_models) -> None:
    """``preprocess`` hands all frames to the image processor in one call; upstream calls it once
    per frame: the same pixels, exactly."""
    from tests.models.conftest import visual_input

    model = tiny_models["eventgpt"]
    visual = visual_input(model, 5, n=4)
    one_at_a_time = torch.stack([model.image_processor(f, return_tensors="pt")["pixel_values"][0] for f in visual.frames])
    pixels = model.preprocess(visual, "What moves?").pixel_values
    assert pixels.shape[0] == 4
    assert torch.equal(pixels, one_at_a_time)
