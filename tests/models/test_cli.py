"""`evspec verify`: PASS on the tiny models, FAIL (exit 1) when the paths disagree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.cli import main
from evspec.models.verify import DecoupledVsGenerate


def test_verify_passes_on_a_synthetic_dataset(tiny_cache: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "tiny-videollava", "--max-samples", "2", "--max-new-tokens", "5", "--device", "cpu", "--repeats", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("PASS") == 3  # two rows and the closing line
    assert "synth_0001_000000" in out and "tower calls" in out and "same" in out


def test_verify_on_a_given_dataset_without_hooks(tiny_cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.data.synth.builder import SynthConfig, build_dataset

    build_dataset(tmp_path, SynthConfig(clips=2, size=(64, 48), seed=3, seq_prefix="mine"))
    code = main(["verify", "tiny-eventgpt", "--dataset", str(tmp_path), "--max-samples", "1",
                 "--max-new-tokens", "3", "--min-new-tokens", "3", "--no-hooks"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "mine_0000_000000" in out and "mine_0001_000000" not in out and "tower calls" not in out


def test_verify_fails_when_the_reference_disagrees(tiny_cache: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.models.llava import Llava

    real = Llava.reference_generate

    def off_by_one(self, prepared, max_new_tokens, min_new_tokens=0):  # type: ignore[no-untyped-def]
        tokens = real(self, prepared, max_new_tokens, min_new_tokens)
        return tokens[:2] + [tokens[2] + 1] + tokens[3:]

    monkeypatch.setattr(Llava, "reference_generate", off_by_one)
    code = main(["verify", "tiny-llava", "--max-samples", "1", "--max-new-tokens", "4", "--min-new-tokens", "4", "--no-hooks"])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAIL" in captured.out and "FAIL" in captured.err
    row = next(line for line in captured.out.splitlines() if "synth_0000_000000" in line)
    assert row.split("\t")[2:] == ["2", "FAIL"]  # piped: tab-separated, first mismatch at index 2


def test_verify_json_is_one_document(tiny_cache: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code = main(["verify", "tiny-llava", "--max-samples", "2", "--max-new-tokens", "3", "--no-hooks", "--json"])
    document = json.loads(capsys.readouterr().out)  # the whole of stdout parses as one document
    assert code == 0 and document["passed"] is True and document["model"] == "tiny-llava"
    assert [s["id"] for s in document["samples"]] == ["synth_0000_000000", "synth_0001_000000"]
    assert all(s["decoupled"] == s["reference"] and len(s["decoupled"]) <= 3 for s in document["samples"])
    assert document["hooks"] is None


def test_verify_option_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "tiny-llava", "--max-samples", "0"]) == 1
    assert main(["verify", "nonsense-model", "--max-samples", "1"]) == 1
    err = capsys.readouterr().err
    assert "--max-samples must be >= 1" in err and "unknown model 'nonsense-model'" in err


@settings(max_examples=50, deadline=None)
@given(a=st.lists(st.integers(0, 5), max_size=8), b=st.lists(st.integers(0, 5), max_size=8))
def test_first_mismatch(a: list[int], b: list[int]) -> None:
    result = DecoupledVsGenerate("x", a, b)
    if a == b:
        assert result.passed and result.first_mismatch is None
    else:
        i = result.first_mismatch
        assert i is not None and not result.passed
        assert a[:i] == b[:i] and (i == min(len(a), len(b)) or a[i] != b[i])
