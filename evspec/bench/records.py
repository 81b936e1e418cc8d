"""What a benchmark run writes: one ``Record`` per (sample, model), appended to ``records.jsonl``.

The file is a JSON-lines log kept by :mod:`evspec.run.rundir` (shared with ``evspec spec``):
one flushed line per record, so a killed run resumes where it stopped; a torn last line is
dropped (and truncated before appending), a bad line anywhere else is an error. This module
only says what a bench record is and reads/appends them as :class:`Record`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from evspec.run.rundir import JsonLinesLog, dump_line, read_lines


@dataclass
class Record:
    """One sample through one model. Times in seconds (definitions: ``evspec.runtime.timing``).

    On failure ``error`` holds the message and the timing/token fields of stages that did not
    run are None/empty. ``extra_stages_s`` holds stages a decode strategy added (e.g. a draft's prefill);
    ``metrics`` holds a decode strategy's own per-sample numbers (e.g. acceptance rate); both are summarised
    by ``evspec.bench.stats`` without the runner knowing their names.

    ``read_s`` is reading the sample's files (events, images, video -> frames); ``model_load_s`` is
    the time the model took to load in the invocation that wrote this record (once per model, not
    part of ``total_s``). Records written before the stage was renamed call it ``load_s``; they read
    back as ``read_s``.
    """

    id: str
    model: str
    decoder: str = "target"  # the decode strategy's name (the field's recorded name is kept)
    read_s: float | None = None
    preprocess_s: float | None = None
    encode_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    total_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    tokens_per_s: float | None = None
    n_prompt_tokens: int | None = None
    n_visual_tokens: int | None = None
    n_new_tokens: int = 0
    stopped_on_eos: bool | None = None
    token_ids: list[int] = field(default_factory=list)
    text: str | None = None
    token_latencies_s: list[float] = field(default_factory=list)
    peak_memory_bytes: dict[str, int | None] = field(default_factory=dict)
    extra_stages_s: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_load_s: float | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.model)

    def to_json(self) -> str:
        return dump_line(asdict(self))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        missing = {"id", "model"} - row.keys()
        if missing:
            raise ValueError(f"missing field(s) {sorted(missing)}")
        if "load_s" in row and "read_s" not in row:  # written before the stage was renamed
            row = {**row, "read_s": row["load_s"]}
            peaks = row.get("peak_memory_bytes")
            if isinstance(peaks, dict) and "load" in peaks:
                row["peak_memory_bytes"] = {("read" if k == "load" else k): v for k, v in peaks.items()}
        return cls(**{k: v for k, v in row.items() if k in names})


def read_records(path: str | Path) -> list[Record]:
    """All complete records in a ``records.jsonl`` (empty when the file does not exist).

    A torn last line is ignored; a bad line elsewhere raises :class:`~evspec.errors.InputError`.
    """
    return read_lines(path, Record.from_dict)


def latest_by_key(records: list[Record]) -> dict[tuple[str, str], Record]:
    """The last record of each (sample id, model): a retried pair's newest attempt wins."""
    return {r.key: r for r in records}


class RecordLog(JsonLinesLog[Record]):
    """Appends records to ``records.jsonl``, one flushed line each. Use as a context manager.

    Opening truncates a torn last line left by a killed run, so the next append starts on a
    clean line; :attr:`existing` holds the records already there.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, Record.from_dict, Record.to_json)
