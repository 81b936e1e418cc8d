"""The shipped demo pair: its files are the manifest's, and its greedy answers on three fixed clips
are the recorded ones (an accidental change of weights or preprocessing shows here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evspec.training.demo import DEMO_DIR, DEMO_MODELS, MANIFEST_NAME, manifest_entries

# Greedy token ids (40 new tokens at most) of the demo models on fixed questions, CPU float32,
# recorded with the weights of MANIFEST.json. The target answers the `describe` question of the clips
# of SynthConfig(clips=3, size=(160, 120), seed=12, min_objects=3, pan_probability=1.0): long answers
# that build 3's target and build 6's answer differently, each chosen token ahead of the next by at
# least 2.2 logits (a clip's video can differ in its last bits between dataset builds, and a near tie
# would flip: one of seed 11's clips did, with a 0.12 margin). The draft answers the row question of
# SynthConfig(clips=3, size=(160, 120), seed=11) (margins of 9 logits or more): the drafts of builds 5
# and 8 answer these alike (on the clips where they differ, a token leads by less than 1.3 logits),
# so here they check the draft's preprocessing; the manifest's hashes tell the weights apart.
# each model's clips (SynthConfig fields) and question type (None: each row's own question)
QUESTIONS = {
    "demo-videollava": ({"clips": 3, "size": (160, 120), "seed": 12, "min_objects": 3, "pan_probability": 1.0}, "describe"),
    "demo-eventgpt": ({"clips": 3, "size": (160, 120), "seed": 11}, None),
}
RECORDED = {
    "demo-videollava": [[274, 552, 497, 330, 410, 273, 311, 270, 436, 867, 267, 553, 486, 330, 454, 410, 273, 311, 270,
                         428, 273, 267, 551, 485, 425, 423, 857, 290, 424, 451, 410, 273, 311, 270, 428, 857, 2],
                        [274, 535, 486, 425, 423, 867, 267, 551, 494, 330, 454, 410, 273, 311, 270, 428, 273, 267, 540,
                         501, 330, 453, 311, 270, 428, 857, 290, 424, 451, 370, 273, 311, 270, 428, 857, 2],
                        [274, 545, 496, 330, 454, 370, 273, 311, 270, 436, 867, 267, 546, 486, 425, 423, 273, 267, 553,
                         501, 330, 454, 410, 273, 311, 270, 436, 857, 290, 424, 451, 311, 270, 436, 857, 2]],
    "demo-eventgpt": [[290, 345, 452, 267, 496, 857, 2],
                      [290, 497, 330, 454, 410, 273, 311, 270, 428, 857, 2],
                      [443, 283, 286, 315, 857, 2]],
}


def test_the_shipped_files_are_the_manifests() -> None:
    manifest = json.loads((DEMO_DIR / MANIFEST_NAME).read_text())
    assert manifest_entries(DEMO_DIR) == manifest["files"]
    assert sum(f["bytes"] for f in manifest["files"].values() if f) <= 16 * 2**20
    assert set(manifest["trainings"]) == set(DEMO_MODELS)
    assert manifest["command"].startswith("python -m evspec.training.demo")


def test_the_shipped_processor_configs_hold_only_the_processors_own_settings() -> None:
    """Nothing evspec attaches to a processor object may reach a shipped checkpoint: at 901aec5 a
    lookup table cached on the CLIP processor was written by save_pretrained, and loaded and saved
    again by each build that started from it."""
    import transformers

    from evspec.models.clip_pixels import clip_image_processor_class

    processors = {"demo-eventgpt/clip_tower": clip_image_processor_class(),
                  "demo-videollava": transformers.VideoLlavaImageProcessor}
    for folder, cls in processors.items():
        saved = json.loads((DEMO_DIR / folder / "preprocessor_config.json").read_text())
        assert set(saved) <= set(cls().to_dict()), folder


def test_the_manifests_command_still_makes_the_shipped_trainings() -> None:
    """Rerun today, the manifest's command asks for the trainings that made the shipped weights:
    same options (a changed default of demo.py would show here) and sizes of the shipped shapes."""
    import shlex

    from evspec.models.tiny import model_size
    from evspec.training.demo import _train_command, dataset_config, parser

    manifest = json.loads((DEMO_DIR / MANIFEST_NAME).read_text())
    args = parser().parse_args(shlex.split(manifest["command"])[3:])
    assert dataset_config(args).model_dump(mode="json") == manifest["dataset"]["synth_config"]
    for name in DEMO_MODELS:
        if "kept_from" in manifest["trainings"][name]:  # taken as it was from the build it names
            continue
        work = Path(args.workdir)
        command = _train_command(args, name, work / "train", work / name)
        assert _but_workers(shlex.join(command[2:])) == _but_workers(manifest["trainings"][name]["command"])
        size = model_size(command[command.index("--size") + 1])
        shipped = json.loads((DEMO_DIR / name / "config.json").read_text())
        text = shipped.get("text_config", shipped)
        assert (text["num_hidden_layers"], text["hidden_size"]) == (size.llama["num_hidden_layers"], size.llama["hidden_size"])


def test_the_shipped_manifest_keeps_the_chain_of_builds_that_made_the_weights() -> None:
    """A build started from an earlier one (--init-from) keeps that one's manifest: following the
    chain back ends at a build from random weights, and each link's trainings name the folder the
    next one back was written to."""
    manifest = json.loads((DEMO_DIR / MANIFEST_NAME).read_text())
    links = 0
    while "init" in manifest:
        earlier = manifest["init"]["manifest"]
        for name, (family, _) in DEMO_MODELS.items():
            training = manifest["trainings"][name]
            ours = {p: f for p, f in manifest["files"].items() if p.startswith(name + "/")}
            theirs = {p: f for p, f in earlier["files"].items() if p.startswith(name + "/")}
            if "kept_from" in training:  # the earlier build's model, its files and entry unchanged
                assert training["kept_from"] == manifest["init"]["from"] and ours == theirs
                # (kept twice: the earlier entry's own kept_from names the link before it)
                assert ({k: v for k, v in training.items() if k != "kept_from"}
                        == {k: v for k, v in earlier["trainings"][name].items() if k != "kept_from"})
                continue
            assert f"--init-from {family}:{Path(manifest['init']['from']) / name}" in training["command"]
            assert set(theirs) == set(ours)
        manifest, links = earlier, links + 1
        assert links < 10
    assert all("--init-from" not in t["command"] for t in manifest["trainings"].values())


def _but_workers(command: str) -> str:
    """A training command without its ``--workers`` count: how many processes read the clips does
    not change what they read (each clip's pixels are computed alone)."""
    import re

    return re.sub(r" --workers \d+", "", command)


def test_a_changed_file_no_longer_matches(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, copy)
    config = copy / "demo-eventgpt" / "config.json"
    config.write_text(config.read_text() + " ")
    assert manifest_entries(copy) != json.loads((copy / MANIFEST_NAME).read_text())["files"]


def _questions(tmp_path: Path, clips: dict, qtype: str | None) -> list:
    from evspec.data.dataset import load_dataset
    from evspec.data.synth.builder import SynthConfig, build_dataset
    from evspec.training.evaluate import questions_of

    build_dataset(tmp_path, SynthConfig(**clips))
    samples = load_dataset(tmp_path)
    return [q for q in questions_of(samples, all_types=True) if q.qtype == qtype] if qtype else questions_of(samples)


@pytest.mark.parametrize("name", list(RECORDED))
def test_greedy_answers_on_three_fixed_clips_are_the_recorded_ones(name: str, tmp_path: Path) -> None:
    from evspec.models.registry import load_model

    questions = _questions(tmp_path, *QUESTIONS[name])
    assert len(questions) == 3
    model = load_model(name)
    got = [model.generate(model.preprocess(model.load(q.sample), q.query), max_new_tokens=40).token_ids for q in questions]
    assert got == RECORDED[name]


def test_the_demo_command_runs_on_a_cpu_at_a_tiny_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest's command, shrunk: synthesis, both trainings, the shipped folders, the manifest."""
    import evspec.training.demo as demo
    from evspec.training.demo import main

    # a commit made while the build runs is not the code that ran: the manifest names the one at the start
    out = tmp_path / "shipped"
    monkeypatch.setattr(demo, "_git_commit", lambda: {"commit": "later" if out.exists() else "at-start", "dirty": False})
    assert main(["--workdir", str(tmp_path / "work"), "--out", str(out), "--clips", "4", "--test-fraction", "0",
                 "--target-size", "tiny", "--draft-size", "tiny", "--target-steps", "2", "--draft-steps", "2",
                 "--batch-size", "2", "--warmup-steps", "1", "--checkpoint-every", "1", "--workers", "2",
                 "--device", "cpu"]) == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest_entries(out) == manifest["files"]
    assert {p.split("/")[0] for p in manifest["files"]} == set(DEMO_MODELS)
    assert not any("training" in p for p in manifest["files"])  # the runs' own files are not shipped
    assert manifest["evspec"]["source_sha256"] and manifest["trainings"]["demo-eventgpt"]["identity"]["event_canvas"] == "sensor"
    assert manifest["evspec"]["commit"] == "at-start"
    for training in manifest["trainings"].values():
        # the shipped recipe's defaults: four views of each clip, the clips kept in float16
        assert training["identity"]["mirror"] is True and training["identity"]["reverse"] is True
        assert training["identity"]["pixel_cache_dtype"] == "float16"
    from evspec.models.registry import load_model

    assert load_model(f"videollava:{out / 'demo-videollava'}").family == "videollava"


def test_a_demo_build_starts_from_an_earlier_one_and_keeps_its_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--init-from: both trainings start from the earlier build's weights; its manifest is kept in
    the new one; an earlier build whose files no longer match its manifest is refused."""
    import shutil

    from evspec.training.demo import main

    tiny = ["--clips", "4", "--test-fraction", "0", "--target-size", "tiny", "--draft-size", "tiny", "--target-steps", "2",
            "--draft-steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--checkpoint-every", "1", "--workers", "1",
            "--device", "cpu"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["--workdir", str(tmp_path / "w1"), "--out", str(first), *tiny]) == 0
    assert main(["--workdir", str(tmp_path / "w2"), "--out", str(second), "--init-from", str(first), *tiny]) == 0
    manifest = json.loads((second / MANIFEST_NAME).read_text())
    assert manifest["init"]["manifest"] == json.loads((first / MANIFEST_NAME).read_text())
    for name, (family, _) in DEMO_MODELS.items():
        assert f"--init-from {family}:{first / name}" in manifest["trainings"][name]["command"]
        assert manifest["trainings"][name]["identity"]["init_from"] == f"{family}:{first / name}"
    changed = tmp_path / "changed"
    shutil.copytree(first, changed)
    (changed / "demo-eventgpt" / "config.json").write_text("{}")
    capsys.readouterr()
    assert main(["--workdir", str(tmp_path / "w3"), "--out", str(tmp_path / "third"), "--init-from", str(changed), *tiny]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --init-from: the files in") and "Traceback" not in err
    # --keep: the target comes from the earlier build byte for byte, only the draft trains
    kept = tmp_path / "kept"
    assert main(["--workdir", str(tmp_path / "w4"), "--out", str(kept), "--init-from", str(first),
                 "--keep", "demo-videollava", "--colour-context", *tiny]) == 0
    manifest = json.loads((kept / MANIFEST_NAME).read_text())
    earlier = json.loads((first / MANIFEST_NAME).read_text())
    target_files = {p: f for p, f in manifest["files"].items() if p.startswith("demo-videollava/")}
    assert target_files == {p: f for p, f in earlier["files"].items() if p.startswith("demo-videollava/")}
    assert manifest["files"]["demo-eventgpt/model.safetensors"] != earlier["files"]["demo-eventgpt/model.safetensors"]
    assert manifest["trainings"]["demo-videollava"] == {**earlier["trainings"]["demo-videollava"], "kept_from": str(first)}
    assert "--colour-context" in manifest["trainings"]["demo-eventgpt"]["command"]
    assert not (tmp_path / "w4" / "demo-videollava").exists()
    for bad, message in ((["--keep", "demo-videollava"], "error: --keep: a model is kept from an earlier build"),
                         (["--init-from", str(first), "--keep", "demo-videollava", "--keep", "demo-eventgpt"],
                          "error: --keep names every model")):
        assert main(["--workdir", str(tmp_path / "w5"), "--out", str(tmp_path / "bad"), *bad, *tiny]) == 1
        err = capsys.readouterr().err
        assert err.startswith(message) and "Traceback" not in err
