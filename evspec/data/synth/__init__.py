"""Synthetic event + video clips: scenes, an ESIM event simulator, QA templates and a resumable
dataset builder that writes the seeds' layout (see :mod:`evspec.data.synth.builder`)."""

from __future__ import annotations

from evspec.data.synth.builder import (
    BuildSummary,
    SynthConfig,
    build_clip,
    build_dataset,
)
from evspec.data.synth.esim import EsimConfig, simulate_events
from evspec.data.synth.questions import QA, QUESTION_TYPES, make_qa
from evspec.data.synth.scenes import SceneSpec, render_frames, sample_scene

__all__ = [
    "QA",
    "QUESTION_TYPES",
    "BuildSummary",
    "EsimConfig",
    "SceneSpec",
    "SynthConfig",
    "build_clip",
    "build_dataset",
    "make_qa",
    "render_frames",
    "sample_scene",
    "simulate_events",
]
