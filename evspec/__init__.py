"""evspec: event-camera drafters for video-language models, and honest stage timing.

The Python API (the command line is a thin layer over the same functions)::

    import evspec

    evspec.build_dataset("data/demo", evspec.SynthConfig(clips=2, size=(160, 120)))
    sample = evspec.load_dataset("data/demo")[0]
    target, draft = evspec.load_model("demo-videollava"), evspec.load_model("demo-eventgpt")
    out = evspec.speculative_generate(target, evspec.DraftModelProposer.paired(draft, target), sample=sample)

Names are imported on first use (module ``__getattr__``), so ``import evspec`` stays fast and
the CLI starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models
    "load_model": "evspec.models.registry",
    "check_model_name": "evspec.models.registry",
    "model_names_help": "evspec.models.registry",
    "VisionLanguageModel": "evspec.models.base",
    "verify_model": "evspec.models.verify",
    # data
    "load_dataset": "evspec.data.dataset",
    "check_dataset": "evspec.data.dataset",
    "Sample": "evspec.data.dataset",
    "read_events": "evspec.data.events",
    "EventStream": "evspec.data.events",
    "build_dataset": "evspec.data.synth.builder",
    "SynthConfig": "evspec.data.synth.builder",
    # the benchmark
    "BenchConfig": "evspec.bench.runner",
    "run_bench": "evspec.bench.runner",
    "read_records": "evspec.bench.records",
    # decoding and speculative decoding
    "SamplingConfig": "evspec.runtime.decode",
    "speculative_generate": "evspec.spec.engine",
    "target_only": "evspec.spec.engine",
    "DraftModelProposer": "evspec.spec.proposers",
    "NgramProposer": "evspec.spec.proposers",
    "OracleProposer": "evspec.spec.proposers",
    "AdapterProposer": "evspec.align.proposer",
    "SpecRunConfig": "evspec.spec.run",
    "run_spec": "evspec.spec.run",
    # training and judging answers
    "VLMTrainConfig": "evspec.training.vlm",
    "LoopConfig": "evspec.training.loop",
    "run_training": "evspec.training.run",
    "evaluate_model": "evspec.training.evaluate",
    "questions_of": "evspec.training.evaluate",
    "EvalConfig": "evspec.training.eval_run",
    "run_eval": "evspec.training.eval_run",
    # errors
    "EvspecError": "evspec.errors",
    "InputError": "evspec.errors",
    "ConfigError": "evspec.errors",
    "ModelError": "evspec.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'evspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
