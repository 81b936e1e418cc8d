"""An unknown model name is refused before any work (no dataset is built, nothing is written)."""

from __future__ import annotations

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
