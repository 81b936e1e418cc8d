"""Issue 15: every hostile or damaged input in the generated corpus ends in one clear error, and
the layers behind that (custom-code refusal, trust_remote_code=False, escaping, containment,
size checks, stale temporary files) each hold on their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from evspec.data.dataset import load_dataset
from evspec.data.events import (
    TEMP_SUFFIX,
    DsecEventFile,
    EventStream,
    atomic_path,
    read_events,
    remove_stale_temp_files,
    write_dsec_h5,
    write_structured_npy,
)
from evspec.errors import ConfigError, EvspecError, InputError, ModelError
from tests.hostile.corpus import VERDICTS, Case, build_corpus, run_case, run_corpus, summary_line, tally

KINDS = {"events", "dataset", "checkpoint", "options", "markup"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, hostile_cache: str):
    corpus = build_corpus(tmp_path_factory.mktemp("hostile"))
    return run_corpus(corpus)


def test_every_hostile_input_ends_in_one_clear_error(outcomes) -> None:
    bad = [f"[{o.verdict}] {o.case.name}: exit {o.exit_code}, {o.raised or o.output.strip()[-300:]}"
           for o in outcomes if o.verdict != "clear error"]
    assert not bad, "\n".join(bad)
    counts = tally(outcomes)
    assert counts["clear error"] == len(outcomes) >= 300
    assert summary_line(outcomes).endswith("0 tracebacks, 0 silent results, 0 code executions")


def test_the_corpus_covers_every_class(outcomes) -> None:
    kinds = Counter(o.case.kind for o in outcomes)
    assert set(kinds) == KINDS and min(kinds.values()) >= 5, kinds


def test_errors_are_one_line_naming_the_file(outcomes) -> None:
    """evspec's own error is one line; an events file or a checkpoint is named in it."""
    for o in outcomes:
        error_lines = [line for line in o.output.splitlines() if line.startswith("error:")]
        assert len(error_lines) <= 1, o.case.name
        if o.case.argv[:2] == ("data", "inspect") and o.case.kind == "events":
            assert o.case.argv[2] in error_lines[0], (o.case.name, error_lines)
        if o.case.kind == "checkpoint":
            assert o.case.argv[1].partition(":")[2] in error_lines[0], (o.case.name, error_lines)


def test_markup_is_shown_literally(outcomes) -> None:
    markup = [o for o in outcomes if o.case.kind == "markup"]
    assert len(markup) >= 4
    for o in markup:
        assert o.case.must_show in o.output, (o.case.name, o.output)


def test_code_asking_checkpoints_are_refused_naming_the_file(outcomes) -> None:
    asked = [o for o in outcomes if "auto_map" in o.case.name or "class transformers lacks" in o.case.name]
    assert len(asked) >= 10
    for o in asked:
        assert "asks for custom code" in o.output and "evspec never runs code" in o.output, o.output
        assert not o.code_ran and not o.stdin_read


def test_pickles_are_refused_not_run(outcomes) -> None:
    pickles = [o for o in outcomes if "pickle" in o.case.name.lower() or "objects" in o.case.name]
    assert len(pickles) >= 8
    assert all(not o.code_ran for o in pickles)
    assert all("refus" in o.output for o in pickles if "truncated" not in o.case.name and "list" not in o.case.name)


def test_the_tally_tells_the_verdicts_apart(tmp_path: Path) -> None:
    """The counter can fail: a run that creates the marker counts as code execution, a good input
    accepted counts as a silent result, an exception escaping main as a traceback."""
    write_structured_npy(_stream(), tmp_path / "good.npy")
    marker = tmp_path / "rendered"
    render = ("data", "render", str(tmp_path / "good.npy"), "--out", str(marker), "--sensor", "64x48")
    assert run_case(Case("makes the marker", "events", render), marker).verdict == "code execution"
    assert run_case(Case("a good file", "events", render), tmp_path / "never").verdict == "silent result"
    assert run_case(Case("a bad file", "events", ("data", "inspect", str(tmp_path / "no.npy"))),
                    tmp_path / "never").verdict == "clear error"
    escaped = run_case(Case("a bug", "events", ("--debug", "data", "inspect", str(tmp_path / "no.npy"))), tmp_path / "x")
    assert escaped.verdict == "traceback" and escaped.raised is not None  # --debug re-raises
    assert set(VERDICTS) == {"clear error", "traceback", "silent result", "code execution"}


# --------------------------------------------------------------------------- checkpoints


def _auto_map_tokenizer_folder(tmp_path: Path, marker: Path) -> Path:
    from evspec.models.tiny import tiny_checkpoint

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint("tiny-llava"), folder)
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\nclass EvilTokenizer(PreTrainedTokenizerFast): pass\n"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_transformers_itself_is_told_no_remote_code(tmp_path: Path, hostile_cache: str, monkeypatch) -> None:
    """Behind evspec's own refusal: the tokenizer loader passes trust_remote_code=False, so even
    called directly on such a folder it neither asks on stdin nor imports the folder's Python."""
    import io

    from evspec.models.tokenizer import load_tokenizer

    marker = tmp_path / "RAN"
    folder = _auto_map_tokenizer_folder(tmp_path, marker)
    answers = io.StringIO("y\n" * 10)
    monkeypatch.setattr(sys, "stdin", answers)
    try:  # transformers either refuses, or (a llava config names a class it has) uses its own class
        tokenizer = load_tokenizer(folder)
        assert type(tokenizer).__module__.startswith("transformers."), type(tokenizer)
    except ModelError as error:
        assert "cannot load the tokenizer" in str(error)
    assert answers.tell() == 0 and not marker.exists()


def test_a_real_process_with_yes_on_stdin_runs_no_checkpoint_code(tmp_path: Path, hostile_cache: str) -> None:
    marker = tmp_path / "RAN"
    folder = _auto_map_tokenizer_folder(tmp_path, marker)
    run = subprocess.run(
        [sys.executable, "-m", "evspec", "verify", f"llava:{folder}", "--device", "cpu", "--no-hooks"],
        input="y\n" * 10, capture_output=True, text=True, timeout=300,
        env={**os.environ, "EVSPEC_CACHE": hostile_cache},
    )
    assert run.returncode == 1, run.stderr
    assert "tokenizer_config.json: asks for custom code" in run.stderr
    assert run.stderr.count("\n") == 1 and not marker.exists()


# --------------------------------------------------------------------------- events


def _stream(n: int = 50) -> EventStream:
    t = np.arange(n, dtype=np.int64) * 100
    return EventStream.from_arrays(np.arange(n) % 64, np.arange(n) % 48, t, np.arange(n) % 2, (64, 48))


def test_negative_time_is_refused_from_files_but_allowed_in_memory(tmp_path: Path) -> None:
    shifted = EventStream.from_arrays(np.zeros(3, int), np.zeros(3, int), np.array([-5, 0, 5]), np.ones(3, int), (4, 4))
    assert int(shifted.t[0]) == -5  # relative times in memory are fine
    events = np.zeros(3, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
    events["t"] = [-5, 0, 5]
    np.save(tmp_path / "neg.npy", events)
    with pytest.raises(InputError, match="negative timestamps"):
        read_events(tmp_path / "neg.npy")


def test_dsec_validate_checks_every_event_and_the_whole_table(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "events.h5"
    write_dsec_h5(_stream(5000), path)
    with DsecEventFile(path, sensor_size=(64, 48)) as dsec:
        dsec.validate(chunk_events=333)  # chunk edges fall anywhere: a good file passes
    with h5py.File(path, "r+") as f:
        table = f["ms_to_idx"][()]
        table[200] += 1
        del f["ms_to_idx"]
        f["ms_to_idx"] = table
    with DsecEventFile(path, sensor_size=(64, 48)) as dsec, pytest.raises(InputError, match="first at ms 200"):
        dsec.validate(chunk_events=333)
    write_dsec_h5(_stream(5000), path)
    with h5py.File(path, "r+") as f:
        f["events/p"][4000] = 3
    with DsecEventFile(path, sensor_size=(64, 48)) as dsec, pytest.raises(InputError, match=r"polarity.*p=3"):
        dsec.validate(chunk_events=333)


def test_requests_beyond_memory_are_refused_with_the_estimate(tmp_path: Path) -> None:
    from evspec.memory import require_memory

    require_memory(1024, "a small array")
    with pytest.raises(ConfigError, match=r"a test array needs about 4096.0 TiB of memory, more than the .* available"):
        require_memory(2**52, "a test array")
    with pytest.raises(InputError, match="a test array"):
        require_memory(2**62, "a test array", tmp_path)


def test_frame_lists_and_decoded_videos_are_sized_before_allocating(tmp_path: Path, monkeypatch) -> None:
    """Each frame fitting is not enough: the whole list must (10^6 frames of 640x480 is 858 GiB)."""
    from evspec import memory
    from evspec.data.render import render_eventgpt_frames
    from evspec.data.video import read_video_frames, write_mp4

    stream = _stream(400)
    write_mp4(np.zeros((4, 16, 16, 3), np.uint8), tmp_path / "v.mp4")
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 100 * 1024)  # a 100 KiB machine
    with pytest.raises(ConfigError, match=r"400 event images of up to 64x48 needs about"):
        render_eventgpt_frames(stream, 400, size="sensor")
    assert len(render_eventgpt_frames(stream, 5, size="sensor")) == 5  # 46 KiB fits
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 * 1024)
    with pytest.raises(InputError, match=r"v.mp4: 50 frames of 16x16 needs about"):
        read_video_frames(tmp_path / "v.mp4", 50)
    assert read_video_frames(tmp_path / "v.mp4", 8).shape == (8, 16, 16, 3)


# --------------------------------------------------------------------------- datasets


def _dataset(tmp_path: Path, rows: list[dict]) -> Path:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    write_structured_npy(_stream(), root / "clip.npy")
    (root / "dataset.json").write_text(json.dumps(rows))
    return root


def test_paths_outside_the_root_need_the_flag(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.npy"
    write_structured_npy(_stream(), outside)
    root = _dataset(tmp_path, [{"id": "a", "query": "q", "event_data": "clip.npy"},
                               {"id": "b", "query": "q", "event_data": str(outside)}])
    with pytest.raises(InputError, match=r"row 1: event_data .* of id 'b' leads to .*elsewhere.npy, outside"):
        load_dataset(root)
    samples = load_dataset(root, allow_outside_root=True)
    assert samples[1].event_path == outside


def test_data_check_names_row_and_path_and_takes_the_flag(tmp_path: Path, capsys) -> None:
    from evspec.cli import main

    outside = tmp_path / "elsewhere.npy"
    write_structured_npy(_stream(), outside)
    root = _dataset(tmp_path, [{"id": "a", "query": "q", "event_data": "clip.npy"},
                               {"id": "b", "query": "q", "event_data": "../elsewhere.npy"}])
    assert main(["data", "check", str(root)]) == 1
    assert "row 1" in capsys.readouterr().err
    assert main(["data", "check", str(root), "--allow-outside-root"]) == 0


def test_data_inspect_prints_markup_in_questions_literally(tmp_path: Path, capsys) -> None:
    from evspec.cli import main

    root = _dataset(tmp_path, [{"id": "[/x]", "query": "what is [bold]this[/]?", "event_data": "clip.npy"}])
    assert main(["data", "inspect", str(root)]) == 0
    assert "what is [bold]this[/]?" in capsys.readouterr().out


# --------------------------------------------------------------------------- options


def test_min_new_tokens_beyond_the_room_is_an_error_not_fewer_tokens() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from evspec.runtime.decode import LanguageModel, decode, prefill

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(config).eval()
    lm = LanguageModel.from_causal_lm(model)
    embeds = model.get_input_embeddings()(torch.arange(10)[None])  # 10 of 16 positions: room for 7 new tokens
    assert len(decode(prefill(lm, embeds), max_new_tokens=7, min_new_tokens=7).token_ids) == 7
    with pytest.raises(ConfigError, match="min_new_tokens=8 cannot be met"):
        decode(prefill(lm, embeds), max_new_tokens=8, min_new_tokens=8)


# --------------------------------------------------------------------------- killed writes


def test_the_next_write_removes_what_killed_writes_left(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".clip.npy.{dead_pid}.abcd1234{TEMP_SUFFIX}"
    live = tmp_path / f".clip.npy.{os.getppid()}.abcd1234{TEMP_SUFFIX}"  # a writer that is still running
    unrelated = tmp_path / "notes.tmp"
    for path in (stale, live, unrelated):
        path.write_bytes(b"half")
    with atomic_path(tmp_path / "clip.npy") as tmp:
        assert tmp.name.endswith(TEMP_SUFFIX) and f".{os.getpid()}." in tmp.name
        tmp.write_bytes(b"whole")
    assert not stale.exists() and live.exists() and unrelated.exists()
    assert (tmp_path / "clip.npy").read_bytes() == b"whole"
    assert remove_stale_temp_files(tmp_path) == []


def test_a_killed_writer_leaves_a_file_the_next_run_removes(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from evspec.data.events import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'out.bin')!r}) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], timeout=120)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(left) == 1 and not (tmp_path / "out.bin").exists()
    assert remove_stale_temp_files(tmp_path) == left
    with pytest.raises(EvspecError):
        read_events(tmp_path / "out.bin")
