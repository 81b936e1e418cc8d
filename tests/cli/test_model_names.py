"""An unknown model name is refused before any work (no dataset is built, nothing is written)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evspec.cli import main


@pytest.mark.parametrize("args", [
    ["bench", "--model", "tiny-llava,nope"],
    ["spec", "--target", "nope"],
    ["spec", "--draft", "videollava"],  # a family without its :PATH
    ["spec", "--draft", "oracle:0.5", "--oracle-draft", "nope"],
    ["verify", "nope"],
])
def test_unknown_model_is_one_line_and_no_work(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    extra = [] if args[0] == "verify" else ["--out", str(out)]
    assert main([*args, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown model" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["bench", "--model", "tiny-llava,eventgpt:/nonexistent/EventGPT-7b"],
    ["bench", "--model", "tiny-llava", "--draft", "eventgpt:/nonexistent/EventGPT-7b"],
    ["spec", "--target", "videollava:/nonexistent/Video-LLaVA"],
    ["spec", "--draft", "eventgpt:/nonexistent/EventGPT-7b"],
    ["verify", "llava:/nonexistent/llava"],
])
def test_missing_checkpoint_folder_is_one_line_and_no_work(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint folder that is not there fails before any sample runs: no run folder, no empty report."""
    out = tmp_path / "run"
    extra = [] if args[0] == "verify" else ["--out", str(out)]
    assert main([*args, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "/nonexistent/" in err and "does not exist" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", [["bench"], ["spec"], ["verify"], ["data", "synth"]])
def test_flags_render_as_flags(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "<bool>" not in text and "--help" in text


def test_help_lists_every_model_name_form(capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.models.registry import FAMILIES, TINY_NAMES
    from evspec.models.tiny import RANDOM_NAMES

    for command in (["bench"], ["spec"], ["verify"]):
        assert main([*command, "--help"]) == 0
        text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # undo wrapping after hyphens
        for name in [*TINY_NAMES, *RANDOM_NAMES, "FAMILY:PATH", *FAMILIES]:
            assert name in text, (command, name)


@pytest.mark.parametrize("args", [
    ["bench", "--quantize", "4bit"],
    ["bench", "--quantize", "3bit"],
    ["spec", "--quantize", "4bit"],
    ["verify", "tiny-llava", "--quantize", "8bit"],
])
def test_quantize_without_cuda_is_one_line(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    extra = [] if args[0] == "verify" else ["--out", str(out)]
    assert main([*args, *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "quantis" in err and len(err.splitlines()) == 1
    assert not (out / "records.jsonl").exists()


def test_one_option_name_per_meaning() -> None:
    """--max-samples (short -n) means 'first N samples' in every command that takes it, and -n
    means nothing else anywhere."""
    import typer.main

    from evspec.cli import app

    def commands(group):  # type: ignore[no-untyped-def]
        for name, command in group.commands.items():
            yield from (commands(command) if hasattr(command, "commands") else [(name, command)])

    for name, command in commands(typer.main.get_command(app)):
        for param in command.params:
            if "-n" in param.opts:
                assert param.opts == ["--max-samples", "-n"], (name, param.opts)
            assert "--samples" not in param.opts, name
