"""The Python API: `import evspec` is fast and lazy, and the README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import evspec

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    (block,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    return block


def test_readme_example_is_ten_lines_or_fewer() -> None:
    lines = [line for line in _python_api_block().splitlines() if line.strip()]
    assert 1 < len(lines) <= 10


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVSPEC_CACHE", str(tmp_path / "cache"))
    exec(compile(_python_api_block(), str(README), "exec"), {"__name__": "readme"})  # noqa: S102 - our own README
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and float(printed[-1]) > 0  # the text and acceptance rate, then a TTFT p50
    assert (tmp_path / "runs" / "api-demo" / "records.jsonl").is_file()


def test_every_export_resolves_and_unknown_names_raise() -> None:
    for name in evspec.__all__:
        assert getattr(evspec, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        evspec.nope  # noqa: B018


def test_import_evspec_and_the_cli_do_not_import_torch() -> None:
    code = "import sys, evspec, evspec.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]
