"""The run folder that ``evspec bench`` and ``evspec spec`` both write, and the rules they share.

A run folder holds ``config.json`` (the run's identity, config, environment and command),
``records.jsonl`` (one JSON line per finished unit of work), ``summary.json`` and ``report.md``.
What each command puts in a record is its own business; how the folder is kept is shared here:

- identity: a rerun into the same folder must have the same identity (the config fields that
  change what a record means), else it is refused, or with ``--force`` the old results are
  deleted first (:func:`check_or_reset`);
- records: a run can be killed at any moment (OOM, Ctrl-C, a lost machine). Each record is
  written as one line, flushed and fsynced, so a rerun reads what is there and skips finished
  work. A kill can leave at most the last line half written; reading drops such a torn line
  (and :class:`JsonLinesLog` truncates it before appending) instead of failing. A bad line
  anywhere else means the file was edited or corrupted, and that is an error;
- provenance: every result file carries the config, versions, device and command that made it
  (every result file carries them, docs/ARCHITECTURE.md): :func:`environment`, :func:`write_run_config`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar

from evspec.errors import ConfigError, InputError

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are not evaluated at run time
    from typing_extensions import Self

CONFIG_NAME = "config.json"
RECORDS_NAME = "records.jsonl"
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"

T = TypeVar("T")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MB blocks (shipped weights, store shards)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- records.jsonl


def dump_line(row: dict[str, Any]) -> str:
    """One record as one compact JSON line (no newline; JSON escapes the ones inside strings)."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def json_object(row: Any) -> dict[str, Any]:
    """A record parser for plain dict records: any JSON object."""
    if not isinstance(row, dict):
        raise TypeError(f"expected a JSON object, got {type(row).__name__}")
    return row


def parse_lines(path: Path, data: bytes, parse: Callable[[Any], T]) -> tuple[list[T], int]:
    """Records and the byte length of the good prefix (everything up to the last complete line)."""
    records: list[T] = []
    good = 0
    lines = data.split(b"\n")
    # the piece after the last newline is either b"" or a torn line
    for number, line in enumerate(lines[:-1], start=1):
        if line.strip():
            try:
                records.append(parse(json.loads(line)))
            except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: nested too deeply
                # A record is written as one "json\n" and JSON escapes newlines, so a torn write
                # never ends in a newline: a bad complete line is corruption, not a kill.
                raise InputError(
                    f"line {number} is not a valid record ({exc}); the file was edited or corrupted: "
                    "move it away or rerun with force=True", path, parameters=["force"],
                ) from exc
        good += len(line) + 1
    return records, good


def read_lines(path: str | Path, parse: Callable[[Any], T]) -> list[T]:
    """All complete records of a JSON-lines file (empty when it does not exist).

    A torn last line is ignored; a bad line elsewhere raises :class:`InputError`.
    """
    path = Path(path)
    if not path.exists():
        return []
    return parse_lines(path, path.read_bytes(), parse)[0]


class JsonLinesLog(Generic[T]):
    """Appends records to a JSON-lines file, one flushed and fsynced line each. A context manager.

    Opening truncates a torn last line left by a killed run, so the next append starts on a
    clean line; :attr:`existing` holds the records already there. ``parse`` turns a decoded
    line into a record (raising ValueError/TypeError when it is not one), ``dump`` a record into
    one line.
    """

    def __init__(self, path: str | Path, parse: Callable[[Any], T], dump: Callable[[T], str]) -> None:
        self.path = Path(path)
        self.parse = parse
        self.dump = dump
        self.existing: list[T] = []
        self._file: IO[str] | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            self.existing, good = parse_lines(self.path, data, self.parse)
            if good < len(data):
                with self.path.open("r+b") as handle:
                    handle.truncate(good)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def append(self, record: T) -> None:
        if self._file is None:
            raise RuntimeError(f"{type(self).__name__}.append outside its with block")
        self._file.write(self.dump(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- identity and config.json


def check_or_reset(
    out_dir: Path, identity: dict[str, Any], fields: Iterable[str], force: bool, outputs: Iterable[str],
) -> None:
    """Refuse to mix records of different configs in one folder, unless ``force`` starts over.

    ``fields``: the identity keys compared with the previous run's ``config.json``; ``outputs``:
    what ``force`` deletes, as names or glob patterns relative to ``out_dir`` (``config.json``
    is always among them).
    """
    path = out_dir / CONFIG_NAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        previous = previous.get("identity", {}) if isinstance(previous, dict) else None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise InputError(f"cannot read the previous run's config ({exc}); rerun with force=True to start over", path,
                         parameters=["force"]) from None
    if not isinstance(previous, dict):
        raise InputError("the previous run's config has no 'identity' object; rerun with force=True to start over", path,
                         parameters=["force"])
    differences = [k for k in fields if previous.get(k) != identity.get(k)]
    if not differences:
        return
    if not force:
        detail = "; ".join(f"{k}: was {previous.get(k)!r}, now {identity.get(k)!r}" for k in differences)
        raise ConfigError(
            f"{out_dir} holds a run with another config ({detail}); use another folder or force=True to discard it",
            parameters=["force"],
        )
    for pattern in (*outputs, CONFIG_NAME):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    """A result file (config.json, summary.json): indented JSON and a final newline."""
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def write_run_config(
    out_dir: Path, *, identity: dict[str, Any], config: dict[str, Any], device: str, command: str | None,
) -> dict[str, Any]:
    """Write ``config.json`` and return what it holds (the ``meta`` every summary carries):
    identity, config, :func:`environment`, the command line (default ``sys.argv``), start time.
    Returned as read back from JSON (tuples become lists), i.e. what summary.json will hold."""
    meta = {"identity": identity, "config": config, "environment": environment(device),
            "command": command or shlex.join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta = json.loads(json.dumps(meta))
    write_json(out_dir / CONFIG_NAME, meta)
    return meta


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
    except Exception:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu": cpu_name(),
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
