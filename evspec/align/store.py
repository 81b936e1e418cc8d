"""The alignment store: what the drafting heads train on, per sample, in sharded safetensors.

A store is one folder::

    config.json                 identity, config, environment, command (evspec.run.rundir)
    shard-r<rank>-<n>.safetensors  rows of one rank, written whole (atomic rename)
    index.rank<rank>.json       that rank's shards (file, rows, sample ids, bytes, sha256), rewritten
                                atomically after each shard: what a resumed extraction trusts
    index.json                  the merged index (:func:`merge_index`): identity, fields, every
                                shard, and the summary (bytes per sample, samples per second)

A row (:class:`AlignRow`) holds one sample's tensors, each stored as ``"<row>.<field>"`` in its shard.
Sequences follow EAGLE's convention: position ``t`` holds the token ``*_ids[t]`` and the hidden state
there, which predicts ``*_ids[t + 1]``; row 0 is the last prompt position, then the answer.

Reading (:class:`AlignStore`) goes through ``safe_open``: shards are memory-mapped and a row is read
when asked for, never a whole store. :meth:`AlignStore.stream` is the training loader's epoch: shards
and rows shuffled from ``(seed, epoch)`` only, at most one shard open and ``buffer_rows`` rows held.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evspec.data.events import atomic_path
from evspec.errors import ConfigError, InputError
from evspec.run.rundir import file_sha256

FORMAT = "evspec-align-store"
FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-r*-*.safetensors"
PART_PATTERN = "index.rank*.json"
STORE_OUTPUTS = (INDEX_NAME, SHARD_PATTERN, PART_PATTERN)
"""What a store consists of besides ``config.json`` (what ``force`` deletes)."""
_PART_NAME = re.compile(r"index\.rank(\d+)\.json")
_SHARD_NAME = re.compile(r"shard-r(\d+)-(\d+)\.safetensors")

OPTIONAL_FIELDS = ("target_visual",)
STORE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- a row


@dataclass
class AlignRow:
    """One sample's extraction. Shapes: T target positions, Td draft positions, D* widths, N* visual tokens.

    Position ``t`` holds the token ``target_ids[t]`` and the hidden states computed there, which
    predict ``target_ids[t + 1]``: row 0 is the target's last prompt position, rows 1.. the answer
    the target gave greedily (its EOS included when it stopped on one). The draft's rows are the
    same text teacher-forced through the draft (row 0: its own last prompt position).
    """

    sample_id: str
    target_ids: torch.Tensor  # [T] int64
    loss_mask: torch.Tensor  # [T] bool: position t has a next token (t < T - 1)
    target_hidden: torch.Tensor  # [T, Dt] the last layer after the final norm (what the LM head reads)
    target_low: torch.Tensor  # [T, Dt] a low layer's output (EAGLE-3's fusion)
    target_mid: torch.Tensor  # [T, Dt] a middle layer's output
    draft_ids: torch.Tensor  # [Td] int64, the draft's ids of the same text (Td == T for a shared vocabulary)
    draft_hidden: torch.Tensor  # [Td, Dd] the draft's last layer after its final norm
    draft_visual: torch.Tensor  # [Nd, Dd] the event model's encoded event features (its encode)
    target_visual: torch.Tensor | None = None  # [Nt, Dt] the target's visual tokens (its encode), if stored
    index: int = -1  # the row's index in its store; -1 when it was not read from one

    @staticmethod
    def tensor_fields() -> tuple[str, ...]:
        return tuple(f.name for f in fields(AlignRow) if f.name not in ("sample_id", "index"))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The row's tensors by field name (fields that are None left out)."""
        return {name: getattr(self, name) for name in self.tensor_fields() if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, sample_id: str, tensors: dict[str, torch.Tensor], index: int = -1) -> AlignRow:
        return cls(sample_id=sample_id, index=index, **{k: tensors.get(k) for k in cls.tensor_fields()})


# ----------------------------------------------------------------------------- shards


@dataclass
class ShardInfo:
    """One shard as an index lists it."""

    file: str
    rank: int
    number: int
    world_size: int  # of the run that wrote it (its rank took the samples sample_ranks gave it)
    sample_ids: list[str]
    sample_indices: list[int]
    lengths: list[list[int]]  # [T, Td] per row
    bytes: int
    sha256: str

    @property
    def rows(self) -> int:
        return len(self.sample_ids)

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "rank": self.rank, "number": self.number, "world_size": self.world_size,
                "rows": self.rows, "sample_ids": self.sample_ids, "sample_indices": self.sample_indices,
                "lengths": self.lengths, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_json(cls, value: Any, where: Path) -> ShardInfo:
        try:
            info = cls(file=str(value["file"]), rank=int(value["rank"]), number=int(value["number"]),
                       world_size=int(value["world_size"]), sample_ids=[str(s) for s in value["sample_ids"]],
                       sample_indices=[int(i) for i in value["sample_indices"]],
                       lengths=[[int(a), int(b)] for a, b in value["lengths"]], bytes=int(value["bytes"]),
                       sha256=str(value["sha256"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"a shard entry is malformed ({type(exc).__name__}: {exc})", where) from None
        if not (len(info.sample_ids) == len(info.sample_indices) == len(info.lengths) == int(value.get("rows", -1))):
            raise InputError(f"shard {info.file}: its row count, sample ids and lengths disagree", where)
        if _SHARD_NAME.fullmatch(info.file) is None:
            raise InputError(f"shard file name {info.file!r} is not one an extraction writes", where)
        return info


def shard_name(rank: int, number: int) -> str:
    return f"shard-r{rank:03d}-{number:05d}.safetensors"


def part_name(rank: int) -> str:
    return f"index.rank{rank:03d}.json"


def write_shard(folder: Path, rank: int, number: int, world_size: int, rows: Sequence[AlignRow],
                sample_indices: Sequence[int]) -> ShardInfo:
    """Write ``rows`` as one shard, atomically; return its index entry (size and sha256 included)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for local, row in enumerate(rows):
        for name, tensor in row.tensors().items():
            tensors[f"{local}.{name}"] = tensor.detach().to("cpu").contiguous()
    ids = [row.sample_id for row in rows]
    name = shard_name(rank, number)
    path = folder / name
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "sample_ids": json.dumps(ids)})
    return ShardInfo(file=name, rank=rank, number=number, world_size=world_size, sample_ids=ids,
                     sample_indices=[int(i) for i in sample_indices],
                     lengths=[[int(r.target_ids.shape[0]), int(r.draft_ids.shape[0])] for r in rows],
                     bytes=path.stat().st_size, sha256=file_sha256(path))


def shard_problem(folder: Path, info: ShardInfo, *, check_sha256: bool = False) -> str | None:
    """Why the shard on disk is not the one ``info`` lists (None when it is): missing, another size,
    another sha256 (when asked: it reads the whole file), or a header safetensors cannot read."""
    path = folder / info.file
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != info.bytes:
        return f"has {size} bytes, the index lists {info.bytes} (truncated or replaced)"
    if check_sha256 and file_sha256(path) != info.sha256:
        return "does not match its sha256 in the index (corrupted)"
    try:
        ids = _shard_sample_ids(path)
    except InputError as exc:
        return str(exc).removeprefix(f"{path}: ")
    if ids != info.sample_ids:
        return "holds other samples than the index lists"
    return None


def _safe_open(path: Path) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a bad header
        raise InputError(f"not a readable safetensors shard ({type(exc).__name__}: {exc})", path) from None


def _shard_sample_ids(path: Path) -> list[str]:
    handle = _safe_open(path)
    try:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise InputError("not a shard of an alignment store (no store format in its metadata)", path)
        ids = json.loads(metadata.get("sample_ids", "null"))
    except ValueError:
        raise InputError("its metadata's sample ids are not JSON", path) from None
    if not isinstance(ids, list):
        raise InputError("its metadata lists no sample ids", path)
    return [str(i) for i in ids]


# ----------------------------------------------------------------------------- per-rank index parts


@dataclass
class RankPart:
    """``index.rank<r>.json``: one rank's finished shards, and its extraction time summed over sessions."""

    rank: int
    identity: dict[str, Any]
    config: dict[str, Any]
    shards: list[ShardInfo] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "rank": self.rank, "identity": self.identity,
                "config": self.config, "seconds": self.seconds, "shards": [s.as_json() for s in self.shards]}

    def write(self, folder: Path) -> None:
        write_json_atomic(folder / part_name(self.rank), self.as_json())


def write_json_atomic(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"cannot read ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise InputError(f"not an alignment store file (no \"format\": \"{FORMAT}\")", path)
    if value.get("version") != FORMAT_VERSION:
        raise InputError(f"store format version {value.get('version')!r}; this evspec reads {FORMAT_VERSION}", path)
    return value


def read_part(path: Path) -> RankPart:
    value = _read_json(path)
    match = _PART_NAME.fullmatch(path.name)
    try:
        part = RankPart(rank=int(value["rank"]), identity=dict(value["identity"]), config=dict(value["config"]),
                        shards=[ShardInfo.from_json(s, path) for s in value["shards"]], seconds=float(value["seconds"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"a malformed index part ({type(exc).__name__}: {exc})", path) from None
    if match is None or int(match.group(1)) != part.rank or any(s.rank != part.rank for s in part.shards):
        raise InputError("the index part's rank disagrees with its name or its shards", path)
    return part


def read_parts(folder: Path) -> list[RankPart]:
    return [read_part(p) for p in sorted(folder.glob(PART_PATTERN)) if _PART_NAME.fullmatch(p.name)]


def identity_difference(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """``key: was .., now ..`` for the keys that differ, or None."""
    keys = sorted(set(expected) | set(found))
    detail = "; ".join(f"{k}: was {found.get(k)!r}, now {expected.get(k)!r}" for k in keys if expected.get(k) != found.get(k))
    return detail or None


# ----------------------------------------------------------------------------- the merged index


def sample_ranks(n: int, world_size: int) -> list[int]:
    """The rank that extracts each of ``n`` samples under ``world_size`` processes: every
    world_size-th of a fixed (seed 0) permutation. Why not ``index % world_size``: evspec's synthetic
    data rotate the question type with the index, so two ranks split the short answers from the long
    ones (1,200 demo samples: 181 s against 292 s of extraction); a permutation mixes them."""
    if world_size == 1:
        return [0] * n
    ranks = [0] * n
    for position, index in enumerate(np.random.default_rng(0).permutation(n).tolist()):
        ranks[index] = position % world_size
    return ranks


def merge_index(folder: str | Path, *, n_samples: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge the ranks' index parts into ``index.json`` (atomically) and return it. Idempotent: any
    process may run it once every rank has finished (rank 0 after a barrier, or a later command).

    Checked: every part has one identity, every listed shard is on disk at its size, no sample is
    in two shards, and each sample sits with the rank its run gave it (:func:`sample_ranks`).
    ``complete`` says whether the store holds ``n_samples`` rows (from the parts' config if not given).
    """
    folder = Path(folder)
    parts = read_parts(folder)
    if not parts:
        raise InputError("no index parts: nothing was extracted into this folder yet", folder)
    identity, config = parts[0].identity, parts[0].config
    for part in parts[1:]:
        detail = identity_difference(identity, part.identity) or weights_difference(config, part.config)
        if detail:
            raise InputError(f"index parts of rank {parts[0].rank} and {part.rank} come from different configs ({detail})", folder)
    shards = sorted((s for p in parts for s in p.shards), key=lambda s: (s.rank, s.number))
    seen: dict[str, str] = {}
    n_expected = int(config.get("n_samples", -1)) if n_samples is None else n_samples
    ranks = {size: sample_ranks(n_expected, size) for size in {s.world_size for s in shards}} if n_expected >= 0 else {}
    for shard in shards:
        problem = shard_problem(folder, shard)
        if problem:
            raise InputError(f"shard {shard.file} {problem}; rerun the extraction to redo its samples", folder / shard.file)
        for sample_id, index in zip(shard.sample_ids, shard.sample_indices):
            if sample_id in seen:
                raise InputError(f"sample {sample_id!r} is in two shards ({seen[sample_id]}, {shard.file})", folder)
            if index < 0 or 0 <= n_expected <= index or (ranks and ranks[shard.world_size][index] != shard.rank):
                raise InputError(f"shard {shard.file} holds sample {index}, which its run did not give rank {shard.rank} "
                                 f"of {shard.world_size}: the index is inconsistent", folder)
            seen[sample_id] = shard.file
    total_bytes = sum(s.bytes for s in shards)
    rows = sum(s.rows for s in shards)
    slowest = max(p.seconds for p in parts)
    index = {
        "format": FORMAT, "version": FORMAT_VERSION, "identity": identity, "config": config,
        "complete": rows == n_expected, "n_samples": n_expected, "rows": rows,
        "fields": config.get("fields", {}),
        "shards": [s.as_json() for s in shards],
        "summary": {
            "rows": rows, "bytes": total_bytes, "bytes_per_sample": total_bytes / rows if rows else None,
            "extraction_seconds": slowest,
            "samples_per_second": rows / slowest if slowest > 0 else None,
            "seconds_note": "the slowest rank's extraction time, summed over resumed sessions; model loading excluded",
            "ranks": {str(p.rank): {"rows": sum(s.rows for s in p.shards), "seconds": p.seconds} for p in parts},
        },
        **(extra or {}),
    }
    write_json_atomic(folder / INDEX_NAME, index)
    return index


# ----------------------------------------------------------------------------- writing: claim, resume, shards


def claim_store(out: Path, identity: dict[str, Any], *, force: bool) -> list[str]:
    """Refuse a folder holding a store of another config (``config.json`` or any index part), unless
    ``force`` deletes it. Then drop the shards that are not what their index part lists (missing,
    torn, another sha256, an unreadable header) and those no part lists (a killed run wrote them
    before listing them), so what remains is exactly what the parts list: their samples are redone.
    Returns what was dropped and why. One process runs this (rank 0), before the others start."""
    from evspec.run.rundir import check_or_reset

    check_or_reset(out, identity, sorted(identity), force, STORE_OUTPUTS)
    parts = read_parts(out)
    for part in parts:
        detail = identity_difference(identity, part.identity)
        if detail is None:
            continue
        if not force:
            raise ConfigError(f"{out} holds an alignment store of another config ({detail}); use another folder "
                              "or force=True to discard it", parameters=["force"])
        for pattern in STORE_OUTPUTS:
            for stale in out.glob(pattern):
                stale.unlink(missing_ok=True)
        return []
    dropped: list[str] = []
    listed = set()
    for part in parts:
        keep = []
        for shard in part.shards:
            problem = shard_problem(out, shard, check_sha256=True)
            if problem is None:
                keep.append(shard)
            else:
                dropped.append(f"shard {shard.file} {problem}: its {shard.rows} samples are redone")
        if len(keep) != len(part.shards):
            part.shards = keep
            part.write(out)
        listed |= {s.file for s in keep}
    for path in out.glob(STORE_OUTPUTS[1]):
        if path.name not in listed:
            path.unlink()  # written by a run killed before its index part listed it (not reported: a normal kill)
    return dropped


WEIGHTS_KEYS = ("target_weights_sha256", "draft_weights_sha256")


def weights_difference(recorded: dict[str, Any], weights: dict[str, Any]) -> str | None:
    """Which model's weights differ between a part's config and ``weights`` (a key either lacks,
    as in stores written before weights were recorded, is not compared). Why weights and not only
    names: the demo models are rebuilt under the same names, and a resumed extraction over rebuilt
    weights would mix the rows of two models."""
    changed = [k.removesuffix("_weights_sha256") for k in WEIGHTS_KEYS
               if recorded.get(k) is not None and weights.get(k) is not None and recorded[k] != weights[k]]
    return f"other weights of the {' and the '.join(changed)} ({', '.join(f'{k}_weights_sha256' for k in changed)})" if changed else None


def check_store_weights(out: Path, weights: dict[str, str]) -> None:
    """A :class:`ConfigError` if rows already in ``out`` were extracted with other model weights."""
    for part in read_parts(out):
        detail = weights_difference(part.config, weights)
        if detail:
            raise ConfigError(f"{out} holds rows extracted with {detail}: the models were rebuilt under the same "
                              "names; use another folder or force=True to discard them", parameters=["force"])


class RankWriter:
    """One rank's shards: rows buffered until ``shard_rows``, then one atomic shard and its index part."""

    def __init__(self, out: Path, rank: int, world_size: int, identity: dict[str, Any], config: dict[str, Any],
                 shard_rows: int) -> None:
        self.out, self.rank, self.world_size, self.shard_rows = out, rank, world_size, shard_rows
        existing = [p for p in read_parts(out) if p.rank == rank]
        self.part = existing[0] if existing else RankPart(rank, identity, config)
        self.part.config = config
        self.next_number = max((s.number for s in self.part.shards), default=-1) + 1
        self.rows: list[AlignRow] = []
        self.indices: list[int] = []
        self._mark = time.perf_counter()

    def add(self, row: AlignRow, sample_index: int) -> None:
        self.rows.append(row)
        self.indices.append(sample_index)
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        info = write_shard(self.out, self.rank, self.next_number, self.world_size, self.rows, self.indices)
        self.next_number += 1
        self.part.shards.append(info)
        now = time.perf_counter()
        self.part.seconds += now - self._mark
        self._mark = now
        self.part.write(self.out)  # after the shard: a part never lists a shard that is not whole
        self.rows, self.indices = [], []


# ----------------------------------------------------------------------------- reading


class AlignStore:
    """A finished store, read memory-mapped. ``store[i]`` is row i (rows in dataset order, whatever
    the ranks and resumes that wrote them); :meth:`stream` is a training epoch.

    Opening checks the index and every shard's size and header (cheap); ``verify=True`` also checks
    each shard's sha256 (reads the whole store once). Problems are one :class:`InputError` each.
    """

    def __init__(self, path: str | Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise InputError(f"not an alignment store (no {INDEX_NAME}); make one with the extraction", self.path)
        self.index = _read_json(index_path)
        try:
            self.identity: dict[str, Any] = dict(self.index["identity"])
            self.config: dict[str, Any] = dict(self.index["config"])
            self.shards = [ShardInfo.from_json(s, index_path) for s in self.index["shards"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"a malformed store index ({type(exc).__name__}: {exc})", index_path) from None
        if not self.index.get("complete"):
            raise InputError(f"the store is incomplete ({self.index.get('rows')} of {self.index.get('n_samples')} samples): "
                             "rerun the extraction into it to finish", self.path)
        for shard in self.shards:
            problem = shard_problem(self.path, shard, check_sha256=verify)
            if problem:
                raise InputError(f"shard {problem}; rerun the extraction to redo it", self.path / shard.file)
        # rows in dataset order: (sample index, shard, row within the shard)
        order = sorted((index, s, local) for s, shard in enumerate(self.shards) for local, index in enumerate(shard.sample_indices))
        self._rows: list[tuple[int, int]] = [(s, local) for _, s, local in order]
        self._open: tuple[int, Any, set[str]] | None = None  # (shard, safe_open handle, its keys)
        self.shards_opened = 0  # how many times a shard was opened (the stream opens each once per epoch)

    # ---- identity
    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.index.get("summary", {}))

    def require(self, **expected: Any) -> None:
        """A :class:`ConfigError` unless the store was made with these identity values (e.g. the
        target and draft a training run uses): a store of other models is refused, not trained on."""
        wrong = {k: v for k, v in expected.items() if self.identity.get(k) != v}
        if wrong:
            detail = "; ".join(f"{k} is {self.identity.get(k)!r}, not {v!r}" for k, v in wrong.items())
            raise ConfigError(f"{self.path} was extracted with another config ({detail})", parameters=list(wrong))

    @property
    def fingerprint(self) -> str:
        """sha256 over the shards' sha256s: which rows a training run read."""
        return hashlib.sha256("".join(s.sha256 for s in self.shards).encode()).hexdigest()

    def field_width(self, name: str) -> int | None:
        """The last dimension of a stored field (its width), from the index; None if not stored."""
        shape = self.index.get("fields", {}).get(name, {}).get("shape")
        return int(shape[-1]) if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None

    # ---- rows
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def sample_ids(self) -> list[str]:
        return [self.shards[s].sample_ids[local] for s, local in self._rows]

    def __getitem__(self, index: int) -> AlignRow:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of a store of {len(self)}")
        shard, local = self._rows[index % len(self)]
        return self._read(shard, local, index % len(self))

    def rows(self, indices: Sequence[int]) -> list[AlignRow]:
        """Rows ``indices`` in that order, read grouped by shard (each shard opened at most once per
        call, one open at a time): a training batch drawn by index from anywhere in the store."""
        for index in indices:
            if not 0 <= index < len(self):
                raise IndexError(f"row {index} of a store of {len(self)}")
        by_shard = sorted(range(len(indices)), key=lambda k: self._rows[indices[k]])
        out: list[AlignRow | None] = [None] * len(indices)
        for k in by_shard:
            shard, local = self._rows[indices[k]]
            out[k] = self._read(shard, local, indices[k])
        return out  # type: ignore[return-value]

    def _handle(self, shard: int) -> tuple[Any, set[str]]:
        """The open shard and its tensor names (one shard open at a time: opening another drops the previous)."""
        if self._open is None or self._open[0] != shard:
            handle = _safe_open(self.path / self.shards[shard].file)
            self._open = (shard, handle, set(handle.keys()))
            self.shards_opened += 1
        return self._open[1], self._open[2]

    def _read(self, shard: int, local: int, index: int) -> AlignRow:
        handle, keys = self._handle(shard)
        info = self.shards[shard]
        try:
            tensors = {name: handle.get_tensor(f"{local}.{name}") for name in AlignRow.tensor_fields()
                       if f"{local}.{name}" in keys}
        except Exception as exc:
            raise InputError(f"cannot read row {local} ({type(exc).__name__}: {exc})", self.path / info.file) from None
        missing = [name for name in AlignRow.tensor_fields() if name not in tensors and name not in OPTIONAL_FIELDS]
        if missing:
            raise InputError(f"row {local} lacks {', '.join(missing)}", self.path / info.file)
        return AlignRow.from_tensors(info.sample_ids[local], tensors, index)

    def _index_of(self) -> dict[tuple[int, int], int]:
        return {key: i for i, key in enumerate(self._rows)}

    # ---- training epochs
    def epoch_shards(self, epoch: int, seed: int, *, rank: int = 0, world_size: int = 1) -> list[int]:
        """The shards of one epoch in their shuffled order (the same on every rank), this rank's share:
        positions rank, rank + world_size, ... of it."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}",
                              parameters=["rank", "world_size"])
        order = np.random.default_rng([seed, epoch]).permutation(len(self.shards)).tolist()
        return order[rank::world_size]

    def stream(self, epoch: int, seed: int, *, buffer_rows: int = 256, rank: int = 0, world_size: int = 1) -> RowStream:
        """One epoch of rows, shuffled from ``(seed, epoch)`` only: this rank's shards in shuffled order,
        each shard's rows in a shuffled order through a shuffle buffer of ``buffer_rows``."""
        if buffer_rows < 1:
            raise ConfigError(f"buffer_rows must be >= 1, got {buffer_rows}", parameters=["buffer_rows"])
        return RowStream(self, self.epoch_shards(epoch, seed, rank=rank, world_size=world_size),
                         np.random.default_rng([seed, epoch, rank, 1]), buffer_rows)


class RowStream:
    """An iterator over one epoch's rows. Memory: one open (memory-mapped) shard and at most
    ``buffer_rows`` rows read; :attr:`peak_rows_held` records the most rows held at once."""

    def __init__(self, store: AlignStore, shards: list[int], rng: np.random.Generator, buffer_rows: int) -> None:
        self.store = store
        self.shards = shards
        self.rng = rng
        self.buffer_rows = buffer_rows
        self.peak_rows_held = 0
        self._started = False

    def __len__(self) -> int:
        return sum(self.store.shards[s].rows for s in self.shards)

    def __iter__(self) -> Iterator[AlignRow]:
        if self._started:
            raise RuntimeError("a RowStream is one pass; ask the store for another epoch")
        self._started = True
        where = self.store._index_of()
        buffer: list[AlignRow] = []
        for shard in self.shards:
            for local in self.rng.permutation(self.store.shards[shard].rows).tolist():
                buffer.append(self.store._read(shard, local, where[(shard, local)]))
                self.peak_rows_held = max(self.peak_rows_held, len(buffer))
                if len(buffer) >= self.buffer_rows:
                    yield self._take(buffer)
        while buffer:
            yield self._take(buffer)

    def _take(self, buffer: list[AlignRow]) -> AlignRow:
        pick = int(self.rng.integers(len(buffer)))
        buffer[pick], buffer[-1] = buffer[-1], buffer[pick]
        return buffer.pop()
