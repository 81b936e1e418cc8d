"""What a benchmark run writes: one ``Record`` per (sample, model), appended to ``records.jsonl``.

Why a JSON-lines log: a run can be killed at any moment (OOM, Ctrl-C, a lost machine). Each
record is written as one line and flushed, so a rerun with the same output folder reads what is
there and skips finished pairs. A kill can leave at most the last line half written; reading
drops such a torn line (and :class:`RecordLog` truncates it before appending) instead of failing.
A bad line anywhere else means the file was edited or corrupted, and that is an error.

Every result file carries the config, versions, device and seed that made it (DESIGN.md):
:func:`environment` collects the versions and the device description.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from evspec.errors import InputError

RECORDS_NAME = "records.jsonl"


@dataclass
class Record:
    """One sample through one model. Times in seconds (definitions: ``evspec.runtime.timing``).

    On failure ``error`` holds the message and the timing/token fields of stages that did not
    run are None/empty. ``extra_stages_s`` holds stages a decoder added (e.g. a draft's prefill);
    ``metrics`` holds a decoder's own per-sample numbers (e.g. acceptance rate); both are summarised
    by ``evspec.bench.stats`` without the runner knowing their names.
    """

    id: str
    model: str
    decoder: str = "target"
    load_s: float | None = None
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
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.model)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        names = {f.name for f in fields(cls)}
        missing = {"id", "model"} - row.keys()
        if missing:
            raise ValueError(f"missing field(s) {sorted(missing)}")
        return cls(**{k: v for k, v in row.items() if k in names})


def _parse_lines(path: Path, data: bytes) -> tuple[list[Record], int]:
    """Records and the byte length of the good prefix (everything up to the last complete line)."""
    records: list[Record] = []
    good = 0
    lines = data.split(b"\n")
    # the piece after the last newline is either b"" or a torn line
    for number, line in enumerate(lines[:-1], start=1):
        if line.strip():
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                # A record is written as one "json\n" and JSON escapes newlines, so a torn write
                # never ends in a newline: a bad complete line is corruption, not a kill.
                raise InputError(
                    f"line {number} is not a valid record ({exc}); the file was edited or corrupted: "
                    "move it away or rerun with --force", path,
                ) from exc
        good += len(line) + 1
    return records, good


def read_records(path: str | Path) -> list[Record]:
    """All complete records in a ``records.jsonl`` (empty when the file does not exist).

    A torn last line is ignored; a bad line elsewhere raises :class:`InputError`.
    """
    path = Path(path)
    if not path.exists():
        return []
    return _parse_lines(path, path.read_bytes())[0]


def latest_by_key(records: list[Record]) -> dict[tuple[str, str], Record]:
    """The last record of each (sample id, model): a retried pair's newest attempt wins."""
    return {r.key: r for r in records}


class RecordLog:
    """Appends records to ``records.jsonl``, one flushed line each. Use as a context manager.

    Opening truncates a torn last line left by a killed run, so the next append starts on a
    clean line; :attr:`existing` holds the records already there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.existing: list[Record] = []
        self._file: IO[str] | None = None

    def __enter__(self) -> RecordLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            self.existing, good = _parse_lines(self.path, data)
            if good < len(data):
                with self.path.open("r+b") as handle:
                    handle.truncate(good)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def append(self, record: Record) -> None:
        if self._file is None:
            raise RuntimeError("RecordLog.append outside its with block")
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- environment


def _driver_version() -> str | None:
    """NVIDIA driver version via NVML if installed, else nvidia-smi; None when neither answers."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - optional: any failure means "ask nvidia-smi"
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def environment(device: str) -> dict[str, Any]:
    """Versions and the device description that every result file carries."""
    import numpy
    import torch
    import transformers

    import evspec

    env: dict[str, Any] = {
        "evspec": evspec.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.version.cuda,
        "gpu": None,
        "gpu_memory_bytes": None,
        "driver": None,
        "argv": sys.argv,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        env.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory), driver=_driver_version())
    return env
