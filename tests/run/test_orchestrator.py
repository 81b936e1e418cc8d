"""The one run loop (evspec/run/orchestrator.py) with a job that loads nothing: resume after a kill,
warm-up, failed samples, failed loads, summary and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from evspec.data.dataset import Sample
from evspec.errors import ConfigError
from evspec.run.orchestrator import Loaded, RunPlan, SampleJob, run_samples
from evspec.run.rundir import dump_line, json_object
from evspec.run.shared import SilentReporter
from tests.bench.conftest import make_dataset


class Killed(Exception):
    """What a kill looks like to the loop: an exception out of a sample."""


class CountingJob(SampleJob[str, dict[str, Any]]):
    """Records {"id", "group", "error"}; raises Killed on the ``kill_at``-th measured sample."""

    def __init__(self, groups: tuple[str, ...] = ("g1", "g2"), kill_at: int | None = None,
                 fail: set[str] = frozenset(), broken_groups: set[str] = frozenset()) -> None:
        self.groups = groups
        self.kill_at, self.fail, self.broken_groups = kill_at, fail, broken_groups
        self.measured: list[tuple[str, str]] = []
        self.warmed: list[tuple[str, str]] = []
        self.loads: list[str] = []

    def parse(self, row: Any) -> dict[str, Any]:
        return json_object(row)

    def dump(self, record: dict[str, Any]) -> str:
        return dump_line(record)

    def pair(self, record: dict[str, Any]) -> tuple[str, str]:
        return (record["id"], record["group"])

    def error(self, record: dict[str, Any]) -> str | None:
        return record["error"]

    def load(self, group: str) -> Loaded[str]:
        self.loads.append(group)
        if group in self.broken_groups:
            raise OSError("no weights")
        return Loaded(f"model {group}", 0.5)

    def load_failed(self, group: str, sample: Sample, message: str) -> dict[str, Any]:
        return {"id": sample.id, "group": group, "error": message}

    def warm_up(self, loaded: Loaded[str], group: str, sample: Sample) -> None:
        self.warmed.append((sample.id, group))

    def run_sample(self, loaded: Loaded[str], group: str, sample: Sample) -> dict[str, Any]:
        if self.kill_at is not None and len(self.measured) == self.kill_at:
            raise Killed
        self.measured.append((sample.id, group))
        error = "bad sample" if sample.id in self.fail else None
        return {"id": sample.id, "group": group, "error": error, "models": loaded.models}

    def summarize(self, records: list[dict[str, Any]], meta: dict[str, Any], model_load_s: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
        return {"n": len(records), "model_load_s": model_load_s, "identity": meta["identity"],
                "machine": sorted(machine)}

    def report(self, out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> Path:
        path = out_dir / "report.md"
        path.write_text(f"{summary['n']} records\n")
        return path


def _plan(out: Path, data: Path, **kw: Any) -> RunPlan:
    values: dict[str, Any] = dict(
        out_dir=out, identity={"seed": 0}, config={"seed": 0}, outputs=("records.jsonl", "summary.json", "report.md"),
        device=torch.device("cpu"), dtype=torch.float32, dataset=str(data), split=None, max_samples=None,
        allow_outside_root=False, warmup=0, seed=0, command="evspec test")
    return RunPlan(**{**values, **kw})


def _lines(out: Path) -> list[tuple[str, str]]:
    return [(row["id"], row["group"]) for row in map(json.loads, (out / "records.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("kill_at", [0, 1, 3, 5])
def test_a_killed_run_resumes_and_every_pair_is_written_once(tmp_path: Path, kill_at: int) -> None:
    data = make_dataset(tmp_path / "data", n=3)
    out = tmp_path / "run"
    first = CountingJob(kill_at=kill_at)
    with pytest.raises(Killed):
        run_samples(_plan(out, data), first, SilentReporter())
    assert len(_lines(out)) == kill_at  # what finished before the kill is on disk
    second = CountingJob()
    outcome = run_samples(_plan(out, data), second, SilentReporter())
    pairs = [(f"clip{i}", g) for g in ("g1", "g2") for i in range(3)]
    assert sorted(_lines(out)) == sorted(pairs)  # every (sample, group) exactly once
    assert second.measured == pairs[kill_at:]  # nothing done twice
    assert [first.loads, second.loads] == [["g1", "g2"][:1 + kill_at // 3], ["g1", "g2"][kill_at // 3:]]
    assert [(r["id"], r["group"]) for r in outcome.records] == pairs  # group then sample order
    summary = json.loads((out / "summary.json").read_text())
    assert summary == outcome.summary and summary["n"] == 6 and summary["machine"] == ["after", "before", "cpu_count"]
    assert outcome.report_path is not None and outcome.report_path.read_text() == "6 records\n"
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "evspec test" and config["identity"] == {"seed": 0}

    third = CountingJob()  # nothing left: no load, no sample, the summary says no load this time
    run_samples(_plan(out, data), third, SilentReporter())
    assert third.loads == [] and third.measured == [] and len(_lines(out)) == 6
    assert json.loads((out / "summary.json").read_text())["model_load_s"] == {"g1": None, "g2": None}


def test_failed_samples_are_retried_and_the_newest_record_wins(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=3)
    out = tmp_path / "run"
    failing = CountingJob(groups=("g",), fail={"clip1"})
    run_samples(_plan(out, data), failing, SilentReporter())
    retry = CountingJob(groups=("g",))
    outcome = run_samples(_plan(out, data), retry, SilentReporter())
    assert retry.measured == [("clip1", "g")]
    assert _lines(out) == [("clip0", "g"), ("clip1", "g"), ("clip2", "g"), ("clip1", "g")]
    assert [r["error"] for r in outcome.records] == [None, None, None]


def test_warm_up_runs_first_samples_and_discards_them(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=2)
    job = CountingJob(groups=("g",))
    run_samples(_plan(tmp_path / "run", data, warmup=3), job, SilentReporter())
    assert job.warmed == [("clip0", "g"), ("clip1", "g"), ("clip0", "g")]  # cycling over the samples
    assert job.measured == [("clip0", "g"), ("clip1", "g")] and len(_lines(tmp_path / "run")) == 2


def test_a_group_that_fails_to_load_records_its_samples_as_failed(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "run"
    outcome = run_samples(_plan(out, data), CountingJob(broken_groups={"g1"}), SilentReporter())
    errors = {(r["id"], r["group"]): r["error"] for r in outcome.records}
    assert errors[("clip0", "g1")] == "model 'g1' failed to load: OSError: no weights"
    assert errors[("clip0", "g2")] is None
    assert outcome.summary["model_load_s"] == {"g1": None, "g2": 0.5}


def test_another_identity_is_refused_before_any_work(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=1)
    out = tmp_path / "run"
    run_samples(_plan(out, data), CountingJob(), SilentReporter())
    job = CountingJob()
    with pytest.raises(ConfigError, match="seed: was 0, now 1"):
        run_samples(_plan(out, data, identity={"seed": 1}), job, SilentReporter())
    assert job.loads == []
    run_samples(_plan(out, data, identity={"seed": 1}, force=True), job, SilentReporter())  # force starts over
    assert len(_lines(out)) == 2 and job.loads == ["g1", "g2"]


def test_the_job_sees_the_samples_once_before_anything_is_written(tmp_path: Path) -> None:
    class Refusing(CountingJob):
        def prepare(self, samples: Any) -> None:
            self.prepared = [s.id for s in samples]
            raise ConfigError("these samples do not fit")

    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "run"
    job = Refusing()
    with pytest.raises(ConfigError, match="do not fit"):
        run_samples(_plan(out, data, max_samples=1), job, SilentReporter())
    assert job.prepared == ["clip0"] and job.loads == []  # the run's samples, before any load
    assert not (out / "config.json").exists() and not (out / "records.jsonl").exists()
