"""StageTimer on CPU: stage sums match the wall clock, token marks, TTFT/TPOT definitions."""

from __future__ import annotations

import gc
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.runtime.decode import LanguageModel, decode, prefill
from evspec.runtime.timing import StageTimer, Timings, collector_paused


def _busy(seconds: float) -> float:
    """Sleep, then spin the remainder; returns the time it really took (a loaded machine may
    preempt it), so assertions compare the timer with what happened, not with the nominal time."""
    start = time.perf_counter()
    end = start + seconds
    time.sleep(seconds * 0.8)
    while time.perf_counter() < end:
        pass
    return time.perf_counter() - start


def test_stage_sum_matches_wall_clock() -> None:
    timer = StageTimer("cpu")
    durations = {"load": 0.004, "preprocess": 0.006, "encode": 0.008, "prefill": 0.010, "decode": 0.020}
    start = time.perf_counter()
    took = {}
    for name, seconds in durations.items():
        with timer.stage(name):
            took[name] = _busy(seconds)
    wall = time.perf_counter() - start
    timings = timer.read()
    assert list(timings.stages) == list(durations)
    assert timings.total_s == pytest.approx(wall, rel=0.05, abs=0.003)
    assert timings.total_s <= wall
    for name, seconds in durations.items():
        assert timings.stages[name] >= took[name] >= seconds
        assert timings.stages[name] == pytest.approx(took[name], abs=0.001)
    assert all(v is None for v in timings.peak_memory_bytes.values())  # CPU: no GPU memory


def test_token_marks_give_latencies_ttft_and_tpot() -> None:
    timer = StageTimer("cpu")
    with timer.stage("load"):
        _busy(0.005)
    with timer.stage("prefill"):
        _busy(0.005)
    with timer.stage("decode"):
        took = [_busy(0.004)]  # choosing the first token
        timer.mark_token(0)
        for i in range(1, 5):
            took.append(_busy(0.002))
            timer.mark_token(i)
    t = timer.read()
    assert t.token_stage == "decode" and t.n_tokens == 5
    assert t.token_latencies[0] == pytest.approx(took[0], abs=0.001)
    assert all(x == pytest.approx(y, abs=0.001) for x, y in zip(t.token_latencies[1:], took[1:]))
    assert sum(t.token_latencies) == pytest.approx(t.stages["decode"], abs=0.001)
    assert t.ttft_s == pytest.approx(t.stages["load"] + t.stages["prefill"] + t.token_latencies[0])
    assert t.tpot_s == pytest.approx((t.stages["decode"] - t.token_latencies[0]) / 4)
    assert t.tokens_per_s == pytest.approx(5 / t.stages["decode"])


def test_read_resets_and_repeated_stage_adds_up() -> None:
    timer = StageTimer("cpu")
    for _ in range(2):
        with timer.stage("encode"):
            _busy(0.003)
    first = timer.read()
    assert first.stages["encode"] >= 0.006
    assert timer.read().stages == {}  # read() reset the timer


def test_misuse_is_refused() -> None:
    timer = StageTimer("cpu")
    with pytest.raises(RuntimeError, match="outside a stage"):
        timer.mark_token(0)
    with timer.stage("decode"):
        with pytest.raises(RuntimeError, match="do not nest"):
            with timer.stage("inner"):
                pass
        with pytest.raises(RuntimeError, match="open stage"):
            timer.read()
    # a stage whose body raises is still closed and timed
    with pytest.raises(ValueError):
        with timer.stage("prefill"):
            raise ValueError("boom")
    assert set(timer.read().stages) == {"decode", "prefill"}


def test_marks_one_per_token_of_the_real_decode_loop() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    lm = LanguageModel.from_causal_lm(LlamaForCausalLM(config).eval())
    timer = StageTimer("cpu")
    with timer.stage("prefill"):
        prefilled = prefill(lm, lm.embed_tokens(torch.arange(5).unsqueeze(0)))
    with timer.stage("decode"):
        result = decode(prefilled, max_new_tokens=7, on_token=timer.mark_token)
    t = timer.read()
    assert t.n_tokens == len(result.token_ids) == 7
    assert t.ttft_s is not None and t.ttft_s < t.total_s


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(st.floats(0, 1), min_size=0, max_size=4),
    latencies=st.lists(st.floats(1e-6, 1), min_size=0, max_size=20),
    after=st.floats(0, 1),
)
def test_derived_metrics_follow_their_definitions(before: list[float], latencies: list[float], after: float) -> None:
    stages = {f"s{i}": v for i, v in enumerate(before)}
    stages["decode"] = sum(latencies) + 1e-3
    stages["after"] = after
    t = Timings(stages=stages, token_stage="decode" if latencies else None, token_latencies=latencies)
    assert t.total_s == pytest.approx(sum(stages.values()))
    if not latencies:
        assert t.ttft_s is None and t.tpot_s is None and t.tokens_per_s is None
        return
    assert t.ttft_s == pytest.approx(sum(before) + latencies[0])
    if len(latencies) < 2:
        assert t.tpot_s is None
    else:
        assert t.tpot_s == pytest.approx((stages["decode"] - latencies[0]) / (len(latencies) - 1))
    assert t.tokens_per_s == pytest.approx(len(latencies) / stages["decode"])


def test_collector_paused_restores_the_collector_state_even_on_error() -> None:
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with collector_paused():
            assert not gc.isenabled()
            raise ValueError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
