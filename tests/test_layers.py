"""The run layer's import direction: ``evspec.run`` below ``evspec.bench`` and ``evspec.spec``, and
``evspec.spec`` never importing ``evspec.bench`` (``evspec bench --draft`` imports the spec engine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHECK = """
import json, sys
import {module}
{construct}
print(json.dumps(sorted(m for m in sys.modules if m.startswith("evspec."))))
"""


def _loaded(module: str, construct: str = "") -> list[str]:
    """The evspec modules a fresh interpreter holds after importing ``module`` (and running ``construct``)."""
    done = subprocess.run([sys.executable, "-c", CHECK.format(module=module, construct=construct)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_spec_imports_nothing_from_bench() -> None:
    loaded = _loaded("evspec.spec.run", "evspec.spec.run.SpecRunConfig(draft='ngram')")
    assert "evspec.spec.run" in loaded and "evspec.run.shared" in loaded  # it did load the run layer
    assert [m for m in loaded if m.startswith("evspec.bench")] == []


@pytest.mark.parametrize("module", ["evspec.run.shared", "evspec.run.rundir", "evspec.run.stats", "evspec.run.config",
                                    "evspec.run.orchestrator"])
def test_the_run_layer_imports_neither_bench_nor_spec(module: str) -> None:
    loaded = _loaded(module)
    assert module in loaded
    assert [m for m in loaded if m.startswith(("evspec.bench", "evspec.spec", "evspec.cli"))] == []
