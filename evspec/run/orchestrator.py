"""The one run loop of the run commands (``evspec bench``, ``evspec spec``, ``evspec eval``).

A command prepares its run (option checks, device and dtype, the identity) and hands the
orchestrator a :class:`RunPlan` and a :class:`SampleJob`; :func:`run_samples` then does what every
run does, in this order:

1. refuse a run folder of another identity, or with ``force`` delete its results
   (:func:`evspec.run.rundir.check_or_reset`);
2. load the samples (building the built-in synthetic set when no dataset is given) and hand them
   to the job once (:meth:`SampleJob.prepare`: the eval checks a hand-made answer file against
   every question here);
3. write ``config.json`` (identity, config, environment, command);
4. resume: a (sample, group) pair with a record without ``error`` in ``records.jsonl`` is not run
   again (a failed one is; the newest record of a pair wins);
5. for each group that has pending samples (the bench's models; the spec's one target + draft
   pair): load it, seed torch, warm up on the first ``warmup`` samples (discarded), freeze the
   loaded objects out of later garbage collections, run each pending sample and append its record
   (one flushed line), telling the :class:`~evspec.run.shared.Reporter`; then drop the group and
   release its memory;
6. the machine's load before and after; ``summary.json`` and the report from the records of this
   run's samples and groups.

What a record holds, how a sample runs and what the summary says stay the command's
(:class:`SampleJob`). This module imports neither ``evspec.bench`` nor ``evspec.spec``.

``evspec align extract`` keeps its own loop (:func:`evspec.align.extract.extract_store`): its
output is safetensors shards written per rank, and it resumes per shard, not per record.
"""

from __future__ import annotations

import gc
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from evspec.errors import ConfigError
from evspec.run.rundir import (
    RECORDS_NAME,
    SUMMARY_NAME,
    JsonLinesLog,
    check_or_reset,
    read_lines,
    write_json,
    write_run_config,
)
from evspec.run.shared import Reporter, error_text, load_samples, release_memory
from evspec.run.stats import machine_load

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

M = TypeVar("M")
R = TypeVar("R")


@dataclass(frozen=True)
class RunPlan:
    """What the orchestrator needs of a prepared run (the command resolved and checked it)."""

    out_dir: Path
    identity: dict[str, Any]  # what a rerun into out_dir must match
    config: dict[str, Any]  # config.json's "config"
    outputs: tuple[str, ...]  # what force deletes (names or globs in out_dir; config.json too)
    device: torch.device
    dtype: torch.dtype
    dataset: str | None
    split: str | None
    max_samples: int | None
    allow_outside_root: bool
    warmup: int
    seed: int
    force: bool = False
    command: str | None = None  # the recorded command line (default sys.argv)


@dataclass
class Loaded(Generic[M]):
    """A loaded group: the command's models, and the seconds they took to load (a number, or one
    per model; recorded as ``model_load_s``)."""

    models: M
    load_s: Any


@dataclass
class RunOutcome(Generic[R]):
    """The records of this run's samples and groups (newest per pair, in group then sample order),
    the summary written to ``summary.json`` and the report's path."""

    records: list[R]
    summary: dict[str, Any]
    report_path: Path | None


class SampleJob(ABC, Generic[M, R]):
    """A run command's part: its groups, how one loads and runs a sample, what its records are, and
    its summary and report. A record belongs to one (sample id, group) pair."""

    groups: Sequence[str]

    # -- records.jsonl
    @abstractmethod
    def parse(self, row: Any) -> R:
        """A decoded line as a record (ValueError/TypeError when it is not one)."""

    @abstractmethod
    def dump(self, record: R) -> str:
        """A record as one JSON line."""

    @abstractmethod
    def pair(self, record: R) -> tuple[str, str]:
        """The (sample id, group) the record is of."""

    @abstractmethod
    def error(self, record: R) -> str | None:
        """The record's error, None when the sample succeeded."""

    # -- the run
    def label(self, group: str) -> str:
        """How the progress messages name a group."""
        return group

    @abstractmethod
    def load(self, group: str) -> Loaded[M]:
        """Load a group's models, timed (on CUDA after a synchronize)."""

    def prepare(self, samples: Sequence[Sample]) -> None:
        """The run's samples, once, before ``config.json`` is written and any group loads (a job
        that needs all of them reads them here; raising ends the run). Default: nothing."""

    def load_failed(self, group: str, sample: Sample, message: str) -> R | None:
        """The record of a pending sample whose group failed to load; None: the failure ends the run."""
        return None

    @abstractmethod
    def run_sample(self, loaded: Loaded[M], group: str, sample: Sample) -> R:
        """One measured sample; a failure that is about the sample is a record with an error."""

    def warm_up(self, loaded: Loaded[M], group: str, sample: Sample) -> None:
        """One discarded sample before the measured ones."""
        self.run_sample(loaded, group, sample)

    def warning(self, group: str, record: R) -> str:
        """The warning a failed sample gives."""
        return f"{self.pair(record)[0]}: {self.error(record)}"

    # -- the results
    @abstractmethod
    def summarize(self, records: list[R], meta: dict[str, Any], model_load_s: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
        """summary.json's content; ``meta`` is config.json's, ``model_load_s`` this invocation's loads per
        group (None: not loaded), ``machine`` the load before and after."""

    @abstractmethod
    def report(self, out_dir: Path, summary: dict[str, Any], records: list[R]) -> Path | None:
        """Write the report; its path (None: no report)."""


def run_samples(plan: RunPlan, job: SampleJob[M, R], reporter: Reporter) -> RunOutcome[R]:
    """Run (or resume) ``job`` into ``plan.out_dir``: the steps in the module docstring."""
    out_dir = plan.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is an existing file; give a folder for the run", parameters=["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    check_or_reset(out_dir, plan.identity, plan.identity.keys(), plan.force, plan.outputs)
    samples = load_samples(plan.dataset, out_dir, split=plan.split, max_samples=plan.max_samples,
                           reporter=reporter, allow_outside_root=plan.allow_outside_root)
    job.prepare(samples)
    meta = write_run_config(out_dir, identity=plan.identity, config=plan.config, device=str(plan.device),
                            command=plan.command)

    before = machine_load()  # before any timed work: the load is other processes'
    machine: dict[str, Any] = {"cpu_count": before["cpu_count"], "before": before}
    model_load_s: dict[str, Any] = {group: None for group in job.groups}
    records_path = out_dir / RECORDS_NAME
    with JsonLinesLog(records_path, job.parse, job.dump) as log:  # truncates a torn last line
        latest = {job.pair(r): r for r in log.existing}
        done = {pair for pair, r in latest.items() if job.error(r) is None}
        todo = {g: [s for s in samples if (s.id, g) not in done] for g in job.groups}
        total = len(samples) * len(job.groups)
        reporter.start(total, total - sum(len(pending) for pending in todo.values()))
        for group in job.groups:
            if todo[group]:
                model_load_s[group] = _run_group(plan, job, group, samples, todo[group], log, reporter)

    wanted = {(s.id, g): (i, j) for i, g in enumerate(job.groups) for j, s in enumerate(samples)}
    latest = {job.pair(r): r for r in read_lines(records_path, job.parse)}
    records = sorted((r for pair, r in latest.items() if pair in wanted), key=lambda r: wanted[job.pair(r)])
    machine["after"] = machine_load()
    summary = job.summarize(records, meta, model_load_s, machine)
    write_json(out_dir / SUMMARY_NAME, summary)
    return RunOutcome(records, summary, job.report(out_dir, summary, records))


def _run_group(plan: RunPlan, job: SampleJob[M, R], group: str, samples: Sequence[Sample],
               pending: Sequence[Sample], log: JsonLinesLog[R], reporter: Reporter) -> Any:
    """Load one group, warm it up, run its pending samples; its load time (None when it failed)."""
    label = job.label(group)
    reporter.status(f"loading {label} on {plan.device} ({plan.dtype})")
    try:
        loaded = job.load(group)
    except Exception as exc:
        message = f"model {group!r} failed to load: {error_text(exc)}"
        failed = [job.load_failed(group, sample, message) for sample in pending]
        kept = [record for record in failed if record is not None]
        if len(kept) < len(failed):
            raise
        reporter.warn(message)
        for record in kept:
            log.append(record)
            reporter.advance(record)
        return None
    torch.manual_seed(plan.seed)
    if plan.warmup:
        reporter.status(f"warming up {label} ({plan.warmup} sample(s), discarded)")
        for i in range(plan.warmup):
            job.warm_up(loaded, group, samples[i % len(samples)])
    reporter.status(f"running {label}")
    gc.collect()
    gc.freeze()  # the loaded objects: later collections need not walk them
    for sample in pending:
        record = job.run_sample(loaded, group, sample)
        log.append(record)
        if job.error(record) is not None:
            reporter.warn(job.warning(group, record))
        reporter.advance(record)
    load_s = loaded.load_s
    del loaded
    release_memory()
    return load_s
