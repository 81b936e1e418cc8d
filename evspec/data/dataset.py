"""Dataset schema and loader for clip datasets laid out like the seeds' (and EventGPT's) data.

Layout under a dataset root::

    event_npy/{seq}/{clip}.npy          raw events (EventGPT .npy dict)
    event_image/{seq}/{clip}_{i}.png    rendered event images, i = 0..4
    mp4/{seq}.mp4  or  video/{seq}/     the video, as an MP4 or a folder of images
    dataset.json                        a JSON list of rows (another name via ``json_name``)

A row carries the seeds' fields (``id``, ``split``, ``query``, ``event_data``, ``event_image``,
``video_data``), optionally ``answer`` and a free ``scene`` dict, or upstream EventGPT's
``conversations`` list, from which ``query`` and ``answer`` are derived. Unknown fields are kept.

Path rule: an absolute path is used as is. A relative path is tried against the root first and
then against the modality's folder (``event_npy/`` for ``event_data``, ``event_image/`` for
``event_image``, ``mp4/`` then ``video/`` for ``video_data``), because some of the seeds' files
store paths relative to those folders. The first candidate that exists wins; when none exists the
root-relative path is kept, and :func:`check_dataset` (or the reader) reports it as missing.

Containment: after symlinks are resolved, every path must lie inside the dataset root (a
dataset names files, and must not make evspec read any file on the machine); ``../x``, an
absolute path elsewhere or a symlink out of the root is an error naming the row, unless the
caller passes ``allow_outside_root=True`` (the CLI's ``--allow-outside-root``). Ids must be
unique (the benchmarks key their resumable records by id) and a dataset must hold rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evspec.data.events import atomic_path, read_events
from evspec.data.video import read_image, read_video_frames
from evspec.errors import ConfigError, EvspecError, InputError

DEFAULT_JSON_NAME = "dataset.json"
EVENT_PLACEHOLDER = "<event>"
_SUBDIRS = {"event": ("event_npy",), "image": ("event_image",), "video": ("mp4", "video")}


class Turn(BaseModel):
    """One turn of upstream EventGPT's ``conversations`` list."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    speaker: str = Field(alias="from")
    value: str


def _strip_placeholder(text: str) -> str:
    """Drop the ``<event>`` placeholder line(s) upstream puts in front of the question."""
    lines = [ln for ln in text.splitlines() if ln.strip() != EVENT_PLACEHOLDER]
    return "\n".join(lines).replace(EVENT_PLACEHOLDER, "").strip()


class ClipRecord(BaseModel):
    """One row of the dataset JSON, in the seeds' form or upstream EventGPT's conversations form."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, populate_by_name=True)

    id: str
    split: str = ""
    query: str | None = None
    answer: str | None = None
    event_data: str | None = None
    event_image: list[str] = Field(default_factory=list)
    video_data: str | None = None
    scene: dict[str, Any] | None = None
    conversations: list[Turn] | None = None

    @field_validator("event_image", mode="before")
    @classmethod
    def _one_image_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _derive_from_conversations(self) -> ClipRecord:
        if self.conversations:
            human = next((t for t in self.conversations if t.speaker == "human"), None)
            gpt = next((t for t in self.conversations if t.speaker == "gpt"), None)
            if self.query is None and human is not None:
                self.query = _strip_placeholder(human.value)
            if self.answer is None and gpt is not None:
                self.answer = gpt.value
        if not self.query:
            raise ValueError("row has no question: give 'query' or a human turn in 'conversations'")
        return self


@dataclass(frozen=True)
class Sample:
    """A row with its paths resolved: what the rest of evspec consumes."""

    id: str
    split: str
    query: str
    answer: str | None
    event_path: Path | None
    event_image_paths: tuple[Path, ...]
    video_path: Path | None
    scene: dict | None
    # The synthetic builder's extra fields (None in other datasets): what an event camera can see of
    # the answer (no colour, no still object under a fixed camera), and the question's type.
    event_visible_answer: str | None = None
    question_type: str | None = None

    @property
    def sensor_size(self) -> tuple[int, int] | None:
        """(width, height) of the event sensor where the row's scene records it (synthetic data
        does), else None: the event reader's default (DSEC's 640x480)."""
        size = (self.scene or {}).get("sensor_size")
        return (int(size[0]), int(size[1])) if isinstance(size, list | tuple) and len(size) == 2 else None


@dataclass(frozen=True)
class Problem:
    """A referenced file that is missing or cannot be read."""

    sample_id: str
    path: Path
    message: str


def _resolve(root: Path, rel: str, kind: str) -> Path:
    """Apply the path rule from the module docstring."""
    path = Path(rel)
    if path.is_absolute():
        return path
    candidates = [root / path] + [root / sub / path for sub in _SUBDIRS[kind]]
    return next((c for c in candidates if c.exists()), candidates[0])


def _outside_root(path: Path, root: Path) -> Path | None:
    """Where ``path`` really points (symlinks resolved) when that is outside ``root``, else None."""
    try:
        real, real_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symlink loop: nothing inside the root can be meant
        return path
    return None if real.is_relative_to(real_root) else real


def check_inside_root(record: ClipRecord, sample: Sample, root: str | Path) -> None:
    """An InputError when one of the sample's files lies outside ``root`` once symlinks are resolved."""
    root = Path(root)
    named = [("event_data", record.event_data, sample.event_path), ("video_data", record.video_data, sample.video_path)]
    named += [("event_image", rel, path) for rel, path in zip(record.event_image, sample.event_image_paths)]
    for field, rel, path in named:
        real = _outside_root(path, root) if path is not None else None
        if real is not None:
            raise InputError(
                f"{field} {rel!r} of id {record.id!r} leads to {real}, outside the dataset root {root}; "
                "pass allow_outside_root=True to read it", parameters=["allow_outside_root"],
            )


def _json_path(root: Path, json_name: str | None) -> tuple[Path, Path]:
    if root.suffix == ".json" and root.is_file() and json_name is None:
        return root.parent, root
    json_path = root / (json_name or DEFAULT_JSON_NAME)
    if not json_path.is_file():
        others = sorted(p.name for p in root.glob("*.json")) if root.is_dir() else []
        hint = f"; JSON files there: {', '.join(others)} (pass json_name)" if others else ""
        raise InputError(f"dataset JSON not found{hint}", json_path)
    return root, json_path


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"]) or "row"
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


def read_records(json_path: str | Path) -> list[ClipRecord]:
    """Parse and validate a dataset JSON list; the first bad row raises with its index and field.
    An empty list and a repeated id are errors too."""
    json_path = Path(json_path)
    try:
        rows = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a readable JSON file ({exc})", json_path) from None
    except RecursionError:
        raise InputError("not a readable JSON file (nested too deeply to parse)", json_path) from None
    if not isinstance(rows, list):
        raise InputError(f"expected a JSON list of rows, got {type(rows).__name__}", json_path)
    if not rows:
        raise InputError("the dataset holds no rows (an empty JSON list)", json_path)
    records = []
    first_row: dict[str, int] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"row {index}: expected an object, got {type(row).__name__}", json_path)
        try:
            record = ClipRecord.model_validate(row)
        except (ValidationError, RecursionError) as exc:
            rid = f" (id {str(row['id'])[:80]!r})" if "id" in row else ""
            why = _describe(exc) if isinstance(exc, ValidationError) else "nested too deeply"
            raise InputError(f"row {index}{rid}: {why}", json_path) from None
        if record.id in first_row:
            raise InputError(f"row {index}: id {record.id!r} repeats row {first_row[record.id]}; ids must be unique", json_path)
        first_row[record.id] = index
        records.append(record)
    return records


def to_sample(record: ClipRecord, root: str | Path) -> Sample:
    """Resolve a record's paths against ``root``."""
    root = Path(root)
    assert record.query is not None  # guaranteed by ClipRecord's validator
    return Sample(
        id=record.id,
        split=record.split,
        query=record.query,
        answer=record.answer,
        event_path=_resolve(root, record.event_data, "event") if record.event_data else None,
        event_image_paths=tuple(_resolve(root, p, "image") for p in record.event_image),
        video_path=_resolve(root, record.video_data, "video") if record.video_data else None,
        scene=record.scene,
        event_visible_answer=_optional_text(record, "event_visible_answer"),
        question_type=_optional_text(record, "question_type"),
    )


def _optional_text(record: ClipRecord, key: str) -> str | None:
    value = (record.model_extra or {}).get(key)
    return value if isinstance(value, str) else None


def load_dataset(
    root: str | Path,
    *,
    split: str | None = None,
    json_name: str | None = None,
    max_samples: int | None = None,
    allow_outside_root: bool = False,
) -> list[Sample]:
    """Load ``root/dataset.json`` (or ``root/json_name``; ``root`` may also be the JSON file),
    keep rows of ``split`` if given, and the first ``max_samples`` of those. Every row's paths must
    stay inside the root unless ``allow_outside_root`` (module docstring); all rows are checked."""
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    root, json_path = _json_path(Path(root), json_name)
    records = read_records(json_path)
    samples = []
    for index, record in enumerate(records):
        sample = to_sample(record, root)
        if not allow_outside_root:
            try:
                check_inside_root(record, sample, root)
            except InputError as exc:
                raise InputError(f"row {index}: {exc}", json_path) from None
        samples.append(sample)
    if split is not None:
        splits = sorted({s.split for s in samples if s.split is not None})
        if split not in splits:  # a typo in --split must not look like a clean, empty dataset
            raise InputError(f"no split {split!r} in the dataset (splits: {', '.join(splits) or 'none'})", json_path)
        samples = [s for s in samples if s.split == split]
    if max_samples is not None:
        samples = samples[:max_samples]
    return samples


def save_dataset_json(records: list[ClipRecord], path: str | Path) -> None:
    """Write rows as a JSON list (aliases, no nulls), atomically."""
    rows = [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in records]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_file(path: Path, kind: str, n_frames: int, sensor_size: tuple[int, int] | None) -> str | None:
    """None when the file opens and decodes, else the reason."""
    if not path.exists():
        return "missing"
    try:
        if kind == "event":
            read_events(path, sensor_size=sensor_size)
        elif kind == "image":
            read_image(path)
        else:  # decoding up to the last sampled frame touches every frame a model would see
            read_video_frames(path, n_frames)
    except EvspecError as exc:
        text = str(exc)
        own = getattr(exc, "path", None) == path
        return text.removeprefix(f"{path}: ") if own else text
    except (OSError, ValueError, KeyError) as exc:  # a reader bug must not hide a bad file
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def check_dataset(
    root: str | Path,
    *,
    split: str | None = None,
    json_name: str | None = None,
    max_samples: int | None = None,
    n_video_frames: int = 8,
    allow_outside_root: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Problem]:
    """Open every file the dataset references (events, event images, video decoded up to the last
    of ``n_video_frames`` uniformly sampled frames) and return one Problem per sample and bad file.
    A file shared by several samples is opened once. An empty list means everything reads.
    ``progress(done, total)`` is called after each sample."""
    samples = load_dataset(
        root, split=split, json_name=json_name, max_samples=max_samples, allow_outside_root=allow_outside_root
    )
    seen: dict[Path, str | None] = {}
    problems: list[Problem] = []
    for done, sample in enumerate(samples, start=1):
        refs = [(p, "image") for p in sample.event_image_paths]
        if sample.event_path is not None:
            refs.insert(0, (sample.event_path, "event"))
        if sample.video_path is not None:
            refs.append((sample.video_path, "video"))
        for path, kind in refs:
            if path not in seen:
                seen[path] = _check_file(path, kind, n_video_frames, sample.sensor_size)
            if seen[path] is not None:
                problems.append(Problem(sample.id, path, seen[path]))
        if progress is not None:
            progress(done, len(samples))
    return problems
