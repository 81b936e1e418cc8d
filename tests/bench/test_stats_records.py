"""Latency statistics against NumPy, records.jsonl round trip and torn-line tolerance."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.bench.records import Record, RecordLog, latest_by_key, read_records
from evspec.bench.stats import summarize_model
from evspec.run.stats import latency_stats
from evspec.errors import InputError


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=60))
def test_latency_stats_match_numpy(values: list[float]) -> None:
    s = latency_stats(values)
    array = np.asarray(values)
    assert s.count == len(values)
    assert s.mean == pytest.approx(array.mean())
    assert s.total == pytest.approx(array.sum())
    assert s.stdev == pytest.approx(array.std(), abs=1e-9)
    for q in (50, 90, 95, 99):
        assert getattr(s, f"p{q}") == pytest.approx(np.percentile(array, q))
    assert s.min == array.min() and s.max == array.max()
    assert s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max


def test_latency_stats_skip_none_and_handle_empty() -> None:
    assert latency_stats([None, 2.0, None, 4.0]).mean == 3.0
    empty = latency_stats([None])
    assert empty.count == 0 and empty.mean is None and empty.p99 is None


def _record(i: int, model: str = "m", error: str | None = None, **kw: object) -> Record:
    if error is not None:
        return Record(id=f"s{i}", model=model, error=error)
    base = dict(read_s=0.1, preprocess_s=0.1, encode_s=0.1, prefill_s=0.2, decode_s=0.5, total_s=1.0,
                ttft_s=0.6, tpot_s=0.1, n_new_tokens=5, token_latencies_s=[0.1] * 5, n_prompt_tokens=10,
                n_visual_tokens=4, token_ids=[1, 2, 3, 4, 5], text="x")
    base.update(kw)
    return Record(id=f"s{i}", model=model, **base)  # type: ignore[arg-type]


def test_summarize_model_throughputs_and_errors() -> None:
    records = [_record(0), _record(1, total_s=3.0, decode_s=1.5), _record(2, error="boom")]
    block = summarize_model(records)
    assert (block["n_records"], block["n_ok"], block["n_errors"]) == (3, 2, 1)
    assert block["samples_per_s"] == pytest.approx(2 / 4.0)
    assert block["tokens_per_s"] == pytest.approx(10 / 4.0)
    assert block["decode_tokens_per_s"] == pytest.approx(10 / 2.0)
    assert block["latency_s"]["total_s"]["p50"] == pytest.approx(2.0)
    assert block["errors"] == [{"id": "s2", "error": "boom"}]


def test_records_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    written = [_record(0, metrics={"acceptance_rate": 0.5}), _record(1, error="missing file")]
    with RecordLog(path) as log:
        for r in written:
            log.append(r)
    assert read_records(path) == written
    assert {f.name for f in fields(Record)} >= {
        "id", "model", "read_s", "preprocess_s", "encode_s", "prefill_s", "decode_s", "total_s", "ttft_s",
        "tpot_s", "n_prompt_tokens", "n_visual_tokens", "n_new_tokens", "token_ids", "text",
        "token_latencies_s", "peak_memory_bytes", "error",
    }


def test_records_of_the_old_stage_name_read_back_as_read_s(tmp_path: Path) -> None:
    """Before the rename a record's file-reading stage was called ``load``."""
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "s0", "model": "m", "load_s": 0.25, "peak_memory_bytes": {"load": 7, "decode": 9}}\n')
    (record,) = read_records(path)
    assert record.read_s == 0.25 and record.peak_memory_bytes == {"read": 7, "decode": 9}


def test_torn_last_line_is_dropped_and_truncated(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with RecordLog(path) as log:
        log.append(_record(0))
        log.append(_record(1))
    whole = path.read_bytes()
    path.write_bytes(whole + _record(2).to_json().encode()[:37])  # a kill mid-write
    assert [r.id for r in read_records(path)] == ["s0", "s1"]
    with RecordLog(path) as log:
        assert [r.id for r in log.existing] == ["s0", "s1"]
        log.append(_record(3))
    assert [r.id for r in read_records(path)] == ["s0", "s1", "s3"]
    assert path.read_bytes().startswith(whole)


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(_record(0).to_json() + "\n{not json\n" + _record(1).to_json() + "\n")
    with pytest.raises(InputError, match="line 2"):
        read_records(path)


def test_latest_record_of_a_pair_wins() -> None:
    records = [_record(0, error="missing"), _record(0), _record(1)]
    latest = latest_by_key(records)
    assert latest[("s0", "m")].error is None and len(latest) == 2


def test_timing_warnings_flag_a_noisy_stage_and_a_loaded_machine() -> None:
    from evspec.bench.stats import summarize
    from evspec.run.stats import timing_warnings

    steady = [_record(i, model="steady", tpot_s=0.010) for i in range(4)]
    noisy = [_record(i, model="noisy", tpot_s=t) for i, t in enumerate((0.0055, 0.006, 0.058, 0.0058))]
    per_model = summarize([*steady, *noisy], ["steady", "noisy"])
    quiet = {"cpu_count": 4, "before": {"loadavg_1m": 0.5}, "after": {"loadavg_1m": 1.4}}  # 1.4 - the run's own core
    (warning,) = timing_warnings(per_model, quiet)
    assert warning.startswith("noisy: tpot varies a lot over samples")
    busy = {"cpu_count": 2, "before": {"loadavg_1m": 3.1}, "after": {"loadavg_1m": 1.2}}
    assert timing_warnings({"steady": per_model["steady"]}, busy) == [
        "the machine was loaded before the run (1-minute load average 3.10 on 2 CPUs): "
        "other work competed with the timed stages"
    ]
    # decode and total grow with the answer's length: their spread is not noise
    long_answers = [_record(i, model="m", decode_s=0.1 * (i + 1) ** 3, total_s=0.1 * (i + 1) ** 3) for i in range(4)]
    assert timing_warnings(summarize(long_answers, ["m"]), None) == []
