"""The run folder shared by `evspec bench` and `evspec spec`: JSON-lines log, identity check, config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evspec.run.rundir import (
    CONFIG_NAME,
    JsonLinesLog,
    check_or_reset,
    dump_line,
    json_object,
    read_lines,
    write_run_config,
)
from evspec.errors import ConfigError, InputError
from tests.bench.conftest import make_dataset


def _log(path: Path) -> JsonLinesLog[dict]:
    return JsonLinesLog(path, json_object, dump_line)


def test_plain_dict_records_survive_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    with _log(path) as log:
        log.append({"id": "a", "text": "line\nbreak é"})
        log.append({"id": "b"})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "c", "te')  # a kill mid-write
    assert [r["id"] for r in read_lines(path, json_object)] == ["a", "b"]
    with _log(path) as log:
        assert log.existing == [{"id": "a", "text": "line\nbreak é"}, {"id": "b"}]
        log.append({"id": "d"})
    assert path.read_bytes() == whole + b'{"id":"d"}\n'
    assert read_lines(tmp_path / "absent.jsonl", json_object) == []


def test_a_bad_complete_line_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(InputError, match="line 2 is not a valid record"):
        read_lines(path, json_object)
    with pytest.raises(InputError, match="line 2"), _log(path):
        pass
    assert path.read_text() == '{"id": "a"}\n[1, 2]\n'  # a corrupt file is not touched


def test_another_identity_is_refused_and_force_deletes_the_outputs(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"identity": {"seed": 0, "dtype": "float32"}}))
    for name in ("records.jsonl", "a.png", "b.png", "keep.txt"):
        (tmp_path / name).write_text("x")
    check_or_reset(tmp_path, {"seed": 0, "dtype": "float32", "other": 1}, ("seed", "dtype"), False, ("*.png",))
    with pytest.raises(ConfigError, match="seed: was 0, now 1"):
        check_or_reset(tmp_path, {"seed": 1, "dtype": "float32"}, ("seed", "dtype"), False, ("*.png",))
    assert (tmp_path / "a.png").exists()
    check_or_reset(tmp_path, {"seed": 1, "dtype": "float32"}, ("seed", "dtype"), True, ("records.jsonl", "*.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_unreadable_previous_config_asks_for_force(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).write_text("{torn")
    with pytest.raises(InputError, match="rerun with force=True") as raised:
        check_or_reset(tmp_path, {"seed": 0}, ("seed",), False, ())
    assert raised.value.parameters == ("force",)  # the CLI shows it as --force


def test_run_config_is_what_the_summary_will_hold(tmp_path: Path) -> None:
    meta = write_run_config(tmp_path, identity={"models": ("a", "b")}, config={"seed": 3}, device="cpu",
                            command="evspec bench")
    assert meta["identity"] == {"models": ["a", "b"]}  # tuples read back as lists
    assert meta["command"] == "evspec bench" and meta["environment"]["device"] == "cpu"
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == meta


class _Reporter:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.advanced: list[dict] = []

    def start(self, total: int, done: int) -> None: ...
    def status(self, message: str) -> None: ...

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def advance(self, record: dict) -> None:
        self.advanced.append(record)


def test_spec_runs_keep_the_folder_as_the_bench_does(tmp_path: Path, loader: Any) -> None:
    """`evspec spec` through the shared pieces: reporter warnings, torn-line resume, identity check."""
    from evspec.spec.run import SpecRunConfig, run_spec

    data = make_dataset(tmp_path / "data", n=3, missing=(1,))
    config = SpecRunConfig(target="a", draft="ngram", dataset=str(data), max_new_tokens=4, warmup=0, device="cpu")
    out = tmp_path / "run"
    reporter = _Reporter()
    run_spec(config, out, model_loader=loader, progress=reporter)
    assert [r["id"] for r in reporter.advanced] == ["clip0", "clip1", "clip2"]
    assert len(reporter.warnings) == 1 and reporter.warnings[0].startswith("clip1: ")
    records = out / "records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:2]) + lines[2][:20])  # a kill while clip2 was written
    resumed = _Reporter()
    result = run_spec(config, out, model_loader=loader, progress=resumed)
    assert [r["id"] for r in resumed.advanced] == ["clip1", "clip2"]  # the failed and the torn one
    assert [r["id"] for r in result.records] == ["clip0", "clip1", "clip2"]
    assert len(records.read_text().splitlines()) == 4  # torn line truncated, then two appended
    with pytest.raises(ConfigError, match="max_new_tokens: was 4, now 5"):
        run_spec(SpecRunConfig(target="a", draft="ngram", dataset=str(data), max_new_tokens=5, warmup=0, device="cpu"),
                 out, model_loader=loader)
