"""One dataclass per run config (evspec/run/config.py): the CLI's options, the resume identity and
the recorded command line all follow from the fields' metadata."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click
import pytest
import torch
import typer.main

from evspec.bench.config import BenchConfig
from evspec.cli import app
from evspec.errors import ConfigError
from evspec.run.config import command_line, flag_of, from_options, identity_fields, parsed
from evspec.spec.config import SpecRunConfig
from evspec.training.eval_config import EvalConfig
from tests.bench.conftest import StandInModel, make_dataset

COMMANDS = [("bench", BenchConfig), ("spec", SpecRunConfig), ("eval", EvalConfig)]
OWN_OPTIONS = {"out", "force"}  # the commands' options that are not config fields
OUTPUT_OPTIONS = {"eval": {"json_output", "records"}}  # options that only choose what is printed or copied

# Every field at a value other than its default (checked below), so a round trip covers every option.
NON_DEFAULT: dict[str, dict[str, Any]] = {
    "bench": dict(
        models=("tiny-llava", "tiny-eventgpt"), dataset="my data/set.json", split="test", max_samples=3,
        max_new_tokens=8, min_new_tokens=2, warmup=0, temperature=0.7, top_p=0.9, seed=5, device="cpu",
        dtype="float32", cache="static", quantize="4bit", event_canvas="sensor", generation_config="checkpoint",
        allow_outside_root=True, draft="ngram", gamma=3, adaptive_gamma=True, parallel_prefill=True,
        draft_device="cpu",
    ),
    "spec": dict(
        target="tiny-videollava", draft="tiny-eventgpt", dataset="my data", split="test", max_samples=3,
        allow_outside_root=True, gamma=3, max_gamma=6, adaptive_gamma=True, draft_confidence=0.4, max_new_tokens=8, min_new_tokens=2,
        temperature=0.7, top_p=0.9, seed=5, parallel_prefill=True, device="cpu", draft_device="cpu",
        dtype="float32", cache="static", draft_cache="eager", quantize="8bit", warmup=0, oracle_draft="tiny-llava", bridge="cross",
        event_canvas="upstream", generation_config="checkpoint",
    ),
}


def _command(name: str) -> click.Command:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def _parse_back(name: str, config_class: type[Any], line: str) -> tuple[Any, dict[str, Any]]:
    """The config (and the other options) the CLI makes of a recorded command line, without running it."""
    args = shlex.split(line)
    assert args[:2] == ["evspec", name]
    params = _command(name).make_context(name, args[2:]).params
    own = {k: params.pop(k) for k in OWN_OPTIONS}
    for k in OUTPUT_OPTIONS.get(name, ()):
        params.pop(k)
    return from_options(config_class, params), own


@pytest.mark.parametrize(("name", "config_class"), COMMANDS)
def test_every_field_is_one_option_with_the_same_default_and_back(name: str, config_class: type[Any]) -> None:
    options = {p.name: p for p in _command(name).params if p.name != "help"}
    for f in fields(config_class):
        option = options.pop(f.name)
        assert flag_of(f) in option.opts, (f.name, option.opts)
        assert parsed(f, option.default) == f.default, f.name
        assert option.help == f.metadata["help"]
    assert set(options) == OWN_OPTIONS | OUTPUT_OPTIONS.get(name, set())  # no option that is not a field, besides
    # --out and --force (and the eval's --json and --records)


@pytest.mark.parametrize(("name", "config_class"), COMMANDS[:2])
def test_the_recorded_command_line_reproduces_the_config(name: str, config_class: type[Any]) -> None:
    default = config_class()
    changed = config_class(**NON_DEFAULT[name])
    assert [f.name for f in fields(config_class) if getattr(changed, f.name) == f.default] == []
    for config in (default, changed, replace(changed, max_samples=None, draft_device=None)):
        for force in (False, True):
            line = command_line(config, ["evspec", name], ["--out", "runs/x y", *(["--force"] if force else [])])
            again, own = _parse_back(name, config_class, line)
            assert again == config
            assert own == {"out": Path("runs/x y"), "force": force}
    # defaults are left out, except the models, which the line always names
    line = command_line(default, ["evspec", name])
    assert line == {"bench": "evspec bench --model demo-eventgpt,demo-videollava,tiny-llava",
                    "spec": "evspec spec --target demo-videollava --draft demo-eventgpt"}[name]


def test_the_recorded_eval_command_line_reproduces_the_config() -> None:
    """EvalConfig's model and answers exclude each other: every other field is changed with each."""
    others = dict(dataset="my data", split="test", max_samples=3, all_questions=True, max_new_tokens=8,
                  device="cpu", dtype="bfloat16", event_canvas="sensor", allow_outside_root=True)
    by_model, by_file = EvalConfig(model="tiny-llava", **others), EvalConfig(answers="my answers.jsonl", **others)
    for config in (by_model, by_file):
        assert [f.name for f in fields(EvalConfig) if getattr(config, f.name) == f.default] == [
            "answers" if config is by_model else "model"]
    for config in (by_model, by_file, EvalConfig(model="tiny-llava"), replace(by_file, max_samples=None)):
        for force in (False, True):
            line = command_line(config, ["evspec", "eval"], ["--out", "runs/x y", *(["--force"] if force else [])])
            again, own = _parse_back("eval", EvalConfig, line)
            assert again == config
            assert own == {"out": Path("runs/x y"), "force": force}
    assert command_line(EvalConfig(model="tiny-llava"), ["evspec", "eval"]) == "evspec eval --model tiny-llava"


def test_identity_is_the_fields_marked_identity() -> None:
    from evspec.bench.runner import IDENTITY_FIELDS as BENCH_IDENTITY
    from evspec.spec.run import IDENTITY_FIELDS as SPEC_IDENTITY

    for config_class, derived in ((BenchConfig, BENCH_IDENTITY), (SpecRunConfig, SPEC_IDENTITY)):
        marked = [f.name for f in fields(config_class) if f.metadata["identity"]]
        assert identity_fields(config_class) == tuple(marked)
        assert set(derived) - set(marked) <= {"decoder"}  # the bench adds its decode strategy
        for free in ("max_samples", "warmup", "allow_outside_root"):
            assert free not in derived
    assert {"target", "draft", "oracle_draft", "gamma", "seed", "cache"} <= set(SPEC_IDENTITY)
    from evspec.training.eval_run import IDENTITY_FIELDS as EVAL_IDENTITY

    assert set(EVAL_IDENTITY) - set(identity_fields(EvalConfig)) == {"answers_sha256"}  # a changed answer file
    assert {"model", "answers", "all_questions", "max_new_tokens"} <= set(EVAL_IDENTITY)
    assert not {"max_samples", "allow_outside_root"} & set(EVAL_IDENTITY)


@pytest.fixture
def loader() -> Callable[[str, torch.device, torch.dtype], StandInModel]:
    from collections import Counter

    calls: Counter = Counter()
    return lambda name, device, dtype: StandInModel(name, device, dtype, calls)


def _spec(data: Path, **kw: Any) -> SpecRunConfig:
    return SpecRunConfig(**{**dict(target="a", draft="ngram", dataset=str(data), max_new_tokens=4, warmup=0,
                                   device="cpu"), **kw})


@pytest.mark.parametrize(("field", "value"), [("gamma", 2), ("seed", 1), ("temperature", 0.5), ("bridge", "same"),
                                              ("oracle_draft", "tiny-llava")])
def test_a_resumed_spec_run_refuses_another_identity_field(tmp_path: Path, loader: Any, field: str, value: Any) -> None:
    from evspec.spec.run import run_spec

    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "run"
    run_spec(_spec(data, max_samples=1), out, model_loader=loader)
    with pytest.raises(ConfigError, match=f"{field}: was "):
        run_spec(_spec(data, max_samples=1, **{field: value}), out, model_loader=loader)
    # max_samples, warmup are not identity: more samples are added to the same run
    result = run_spec(_spec(data, max_samples=2, warmup=1), out, model_loader=loader)
    assert [r["id"] for r in result.records] == ["clip0", "clip1"]
    assert len((out / "records.jsonl").read_text().splitlines()) == 2


def test_a_resumed_bench_run_refuses_another_identity_field(tmp_path: Path, loader: Any) -> None:
    from evspec.bench.runner import run_bench

    data = make_dataset(tmp_path / "data", n=2)
    out = tmp_path / "run"
    config = BenchConfig(models=("a",), dataset=str(data), max_new_tokens=3, warmup=0, device="cpu", max_samples=1)
    run_bench(config, out, model_loader=loader, write_report=False)
    with pytest.raises(ConfigError, match="max_new_tokens: was 3, now 4"):
        run_bench(replace(config, max_new_tokens=4), out, model_loader=loader, write_report=False)
    with pytest.raises(ConfigError, match="decoder: was"):  # the draft options are in the identity as the decoder
        run_bench(replace(config, draft="ngram"), out, model_loader=loader, write_report=False)
    result = run_bench(replace(config, max_samples=2, models=("a", "b")), out, model_loader=loader, write_report=False)
    assert sorted(r.key for r in result.records) == [("clip0", "a"), ("clip0", "b"), ("clip1", "a"), ("clip1", "b")]
    assert len((out / "records.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize(("module", "config_class"), [("evspec/bench/report.py", BenchConfig),
                                                      ("evspec/spec/report.py", SpecRunConfig)])
def test_the_reports_read_only_config_fields(module: str, config_class: type[Any]) -> None:
    """The reports take their settings from the recorded config (``asdict`` of the dataclass): every
    key they read is a field, so renaming a field cannot leave a report reading a stale name."""
    import re

    text = (Path(__file__).parents[2] / module).read_text()
    keys = set(re.findall(r"config\[['\"](\w+)['\"]\]", text)) | set(re.findall(r"config\.get\(['\"](\w+)['\"]", text))
    assert keys and keys <= {f.name for f in fields(config_class)}, keys


def test_a_bench_config_with_a_draft_decodes_speculatively(tmp_path: Path, loader: Any) -> None:
    from evspec.bench.runner import TargetOnlyStrategy, run_bench

    data = make_dataset(tmp_path / "data", n=1)
    config = BenchConfig(models=("a",), dataset=str(data), max_new_tokens=4, warmup=0, device="cpu", draft="ngram",
                         gamma=2)
    result = run_bench(config, tmp_path / "run", model_loader=loader, write_report=False)
    (record,) = result.records
    assert record.error is None and record.decoder == "spec:ngram" and record.metrics["drafts"] >= 0
    assert result.summary["identity"]["decoder"]["gamma"] == 2
    with pytest.raises(ConfigError, match="either a decode strategy or draft"):
        run_bench(config, tmp_path / "other", model_loader=loader, strategy=TargetOnlyStrategy())
