"""evspec train / eval: the one loop, a tiny VLM trained through the stage interface, resume,
export in the family's layout, answer judging, and the refusals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evspec.cli import main
from evspec.data.synth.builder import SynthConfig, build_dataset
from evspec.errors import ConfigError
from evspec.training.evaluate import exact_match, judge, questions_of, summarize, token_f1
from evspec.training.loop import LoopConfig, batch_indices, learning_rate

SIZE = (96, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-data")
    build_dataset(out, SynthConfig(clips=6, size=SIZE, seed=3, test_fraction=0.34))
    return out


def _train_args(dataset: Path, out: Path, family: str = "videollava", steps: int = 6, **extra: str) -> list[str]:
    args = ["train", "--family", family, "--size", "tiny", "--dataset", str(dataset), "--out", str(out),
            "--steps", str(steps), "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "1",
            "--eval-every", "1000", "--eval-questions", "2", "--checkpoint-every", "2", "--device", "cpu"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


# ----------------------------------------------------------------------------- the loop's pieces


def test_batches_visit_every_example_once_per_epoch_in_a_seeded_order() -> None:
    n, batch = 10, 4
    stream = [i for step in range(5) for i in batch_indices(n, batch, seed=1, step=step)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # each epoch reshuffles
    assert batch_indices(n, batch, 1, 3) == batch_indices(n, batch, 1, 3)
    assert batch_indices(n, batch, 1, 3) != batch_indices(n, batch, 2, 3)


def test_learning_rate_warms_up_then_decays_to_a_tenth() -> None:
    config = LoopConfig(steps=100, lr=1.0, warmup_steps=10)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 55) == pytest.approx(0.55)
    assert learning_rate(config, 100) == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        LoopConfig(lr=float("nan"))


def test_a_vlm_refuses_fsdp() -> None:
    """FSDP serves alignment heads; a VLM's export writes its family's layout from the module itself."""
    from evspec.training.vlm import VLMTrainConfig

    with pytest.raises(ConfigError, match="fsdp is for alignment heads") as error:
        VLMTrainConfig(family="videollava", dataset="d", size="tiny", loop=LoopConfig(fsdp=True))
    assert list(error.value.parameters) == ["fsdp"]
    VLMTrainConfig(family="videollava", dataset="d", size="tiny", loop=LoopConfig())


# ----------------------------------------------------------------------------- judging answers


def test_exact_match_and_token_f1_by_hand() -> None:
    assert exact_match("The red circle moves.", "the red  circle moves") == 1.0
    assert exact_match("A red circle.", "An red circle.") == 0.0  # articles count
    # prediction: the circle moves left (4) vs reference: the red circle moves left (5): 4 common
    assert token_f1("the circle moves left", "the red circle moves left") == pytest.approx(2 * 1.0 * 0.8 / 1.8)
    assert token_f1("blue", "red") == 0.0


def test_eval_scores_a_hand_made_answer_file(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from evspec.data.dataset import load_dataset

    samples = load_dataset(dataset)
    # the first sample answered with its full answer, the second with its event-visible one,
    # every other one with nonsense
    rows = []
    for i, s in enumerate(samples):
        prediction = s.answer if i == 0 else s.event_visible_answer if i == 1 else "nothing at all"
        rows.append({"id": s.id, "prediction": prediction})
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--dataset", str(dataset), "--answers", str(answers), "--json", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    n = len(samples)
    full_matches = 1 + (samples[1].answer == samples[1].event_visible_answer)
    seen_matches = 1 + (samples[0].answer == samples[0].event_visible_answer)
    assert summary["answer"]["exact_match"] == pytest.approx(full_matches / n)
    assert summary["event_visible_answer"]["exact_match"] == pytest.approx(seen_matches / n)
    assert summary["answer"]["n"] == n
    by_hand = judge(questions_of(samples)[0], samples[0].answer)
    assert by_hand.scores["answer"] == {"exact_match": 1.0, "f1": 1.0}
    assert set(summary["answer"]["by_type"]) == {s.question_type for s in samples}


def test_eval_refuses_answer_files_that_do_not_fit(dataset: Path, tmp_path: Path) -> None:
    from evspec.data.dataset import load_dataset

    samples = load_dataset(dataset)
    answers = tmp_path / "a.jsonl"
    out = ["--out", str(tmp_path / "run")]  # eval writes a run folder (records, summary, report)
    answers.write_text(json.dumps({"id": samples[0].id, "prediction": "x"}) + "\n")
    assert main(["eval", "--dataset", str(dataset), "--answers", str(answers), *out]) == 1  # the others unanswered
    answers.write_text(json.dumps({"id": "nosuch", "prediction": "x"}) + "\n")
    assert main(["eval", "--dataset", str(dataset), "--answers", str(answers), *out]) == 1
    assert main(["eval", "--dataset", str(dataset), *out]) == 1  # neither a model nor answers


def test_summary_per_question_type() -> None:
    from evspec.training.evaluate import Judged

    judged = [Judged("a", "objects", "x", {"answer": {"exact_match": 1.0, "f1": 1.0}}),
              Judged("b", "objects", "y", {"answer": {"exact_match": 0.0, "f1": 0.5}}),
              Judged("c", "motion", "z", {"answer": {"exact_match": 1.0, "f1": 1.0}})]
    summary = summarize(judged)["answer"]
    assert summary["exact_match"] == pytest.approx(2 / 3)
    assert summary["by_type"]["objects"] == {"exact_match": 0.5, "f1": 0.75, "n": 2}


# ----------------------------------------------------------------------------- training


def test_training_lowers_the_loss_and_writes_a_checkpoint_that_loads_and_verifies(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "vl"
    assert main(_train_args(dataset, out, steps=20)) == 0
    rows = [json.loads(line) for line in (out / "training" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and losses[-1] < losses[0] * 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "video_llava" and config["evspec_training"]["answer_field"] == "answer"
    assert (out / "preprocessor_config.json").is_file() and (out / "tokenizer.json").is_file()
    run = json.loads((out / "training" / "config.json").read_text())
    assert run["identity"]["loop"]["steps"] == 20 and "evspec train" in run["command"]
    assert main(["verify", f"videollava:{out}", "--dataset", str(dataset), "--max-samples", "1",
                 "--max-new-tokens", "8", "--device", "cpu", "--no-hooks"]) == 0


def test_eventgpt_trains_on_event_visible_answers_in_upstream_layout(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eg"
    assert main(_train_args(dataset, out, family="eventgpt", steps=2, event_canvas="sensor")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["evspec_training"]["answer_field"] == "event_visible_answer"
    assert config["evspec_event_canvas"] == "sensor"
    keys = set(_weights(out))
    assert any(k.startswith("model.visual_tower.visual_tower.vision_model.") for k in keys)  # upstream's names
    assert not (out / "clip_tower" / "model.safetensors").exists()  # the tower's weights live in the main file
    from evspec.models.registry import load_model

    model = load_model(f"eventgpt:{out}")
    assert model.event_canvas == "sensor"  # the checkpoint's own canvas, unless asked otherwise
    assert load_model(f"eventgpt:{out}", event_canvas="upstream").event_canvas == "upstream"


@pytest.mark.filterwarnings("ignore::evspec.models.eventgpt.EventWindowWarning")  # the synthetic 1 s windows
def test_mirror_learns_every_question_again_on_its_clip_flipped(dataset: Path, tmp_path: Path) -> None:
    from evspec.data.synth.questions import mirrored_answer
    from evspec.training.vlm import VLMTrainConfig, prepare_task

    config = VLMTrainConfig(family="eventgpt", dataset=str(dataset), size="tiny", eval_questions=0, mirror=True,
                            pixel_cache_dtype="float16", event_canvas="sensor")
    (tmp_path / "m" / "training").mkdir(parents=True)
    task = prepare_task(config, tmp_path / "m", torch.device("cpu"))
    half = len(task.examples) // 2
    plain, mirrored = task.examples[:half], task.examples[half:]
    assert not any(e.mirrored for e in plain) and all(e.mirrored for e in mirrored)
    tokenizer = task.model.tokenizer
    changed = 0
    for a, b in zip(plain, mirrored):
        assert a.clip == b.clip and torch.equal(a.prompt_ids, b.prompt_ids)
        text = tokenizer.decode(a.answer_ids[:-1])
        assert tokenizer.decode(b.answer_ids[:-1]) == mirrored_answer(text)
        changed += not torch.equal(a.answer_ids, b.answer_ids)
        assert torch.equal(task._pixels(b), task._pixels(a).flip(-1))
    assert changed > 0
    assert task.pixels[0].dtype == torch.float16 and task._pixels(plain[0]).dtype == task.model.dtype
    out = tmp_path / "cli"
    assert main(_train_args(dataset, out, steps=2) + ["--mirror", "--pixel-cache-dtype", "float16"]) == 0
    run = json.loads((out / "training" / "config.json").read_text())
    assert run["identity"]["mirror"] is True and "--mirror --pixel-cache-dtype" not in run["command"]
    assert "--pixel-cache-dtype float16 --mirror" in run["command"]


def test_colour_words_come_out_of_an_answer_with_the_article_that_follows_them() -> None:
    from evspec.training.vlm import without_colours

    assert without_colours("The scene shows a white circle, an orange star and a red ring.") == \
        "The scene shows a circle, a star and a ring."
    assert without_colours("An orange star moves up, the cyan ring stands still.") == "A star moves up, the ring stands still."
    assert without_colours("One object is moving.") == "One object is moving."
    assert without_colours("A redder circle") == "A redder circle"  # whole words only


@pytest.mark.filterwarnings("ignore::evspec.models.eventgpt.EventWindowWarning")  # the synthetic 1 s windows
def test_colour_context_reads_the_full_answer_and_learns_only_what_the_event_camera_sees(
        dataset: Path, tmp_path: Path) -> None:
    """Each answer that differs from the event-visible one in colour words alone is learnt a second
    time with them in: colour words and the article before one are read, never labels, so the
    labels are the event-visible answer's words."""
    from evspec.data.synth.scenes import COLOURS
    from evspec.training.vlm import IGNORE, VLMTrainConfig, prepare_task, without_colours

    config = VLMTrainConfig(family="eventgpt", dataset=str(dataset), size="tiny", eval_questions=0, mirror=True,
                            colour_context=True, event_canvas="sensor")
    (tmp_path / "c" / "training").mkdir(parents=True)
    task = prepare_task(config, tmp_path / "c", torch.device("cpu"))
    tokenizer = task.model.tokenizer
    plain = [e for e in task.examples if e.learnt is None]
    coloured = [e for e in task.examples if e.learnt is not None]
    assert coloured and len(coloured) < len(plain)
    visible = {(e.clip, e.mirrored, tokenizer.decode(e.answer_ids[:-1])) for e in plain}
    for e in coloured:
        full = tokenizer.decode(e.answer_ids[:-1])
        assert (e.clip, e.mirrored, without_colours(full)) in visible and full != without_colours(full)
        words = [tokenizer.decode([t]).strip() for t in e.answer_ids.tolist()]
        labels = e.targets().tolist()
        for i, (word, learnt) in enumerate(zip(words, e.learnt.tolist())):
            before_colour = i + 1 < len(words) and words[i + 1] in COLOURS and word in ("a", "an", "A", "An", "n")
            assert learnt == (word not in COLOURS and not before_colour and not (word == "A" and words[i + 1] == "n"))
            assert (labels[i] == IGNORE) == (not learnt)
    # the loss counts the learnt tokens only
    _, metrics = task.loss([next(i for i, e in enumerate(task.examples) if e is coloured[0])])
    assert metrics["answer_tokens"] == float(coloured[0].learnt.sum())
    with pytest.raises(ConfigError, match="colour_context"):
        VLMTrainConfig(family="videollava", dataset=str(dataset), size="tiny", colour_context=True)
    out = tmp_path / "cli"
    assert main(_train_args(dataset, out, family="eventgpt", steps=2) + ["--colour-context"]) == 0
    run = json.loads((out / "training" / "config.json").read_text())
    assert run["identity"]["colour_context"] is True and "--colour-context" in run["command"]


@pytest.mark.filterwarnings("ignore::evspec.models.eventgpt.EventWindowWarning")  # the synthetic 1 s windows
def test_reverse_learns_every_question_again_played_backwards(dataset: Path, tmp_path: Path) -> None:
    """Each question four times with mirror and reverse; a reversed example's answer has its
    directions turned around, and its event images are the clip's in reverse order with the
    polarity colours swapped: what drawing the events with the other palette gives."""
    import numpy as np

    from evspec.data.events import read_events
    from evspec.data.render import render_eventgpt_frames
    from evspec.data.synth.questions import mirrored_answer, reversed_answer
    from evspec.training.vlm import VLMTrainConfig, prepare_task

    config = VLMTrainConfig(family="eventgpt", dataset=str(dataset), size="tiny", eval_questions=0, mirror=True,
                            reverse=True, event_canvas="sensor")
    (tmp_path / "r" / "training").mkdir(parents=True)
    task = prepare_task(config, tmp_path / "r", torch.device("cpu"))
    n = len(task.examples) // 4
    groups = [task.examples[i * n:(i + 1) * n] for i in range(4)]
    assert [(g[0].mirrored, g[0].reversed) for g in groups] == [(False, False), (True, False), (False, True), (True, True)]
    tokenizer = task.model.tokenizer
    turned = 0
    for plain, back, both in zip(groups[0], groups[2], groups[3]):
        text = tokenizer.decode(plain.answer_ids[:-1])
        assert tokenizer.decode(back.answer_ids[:-1]) == reversed_answer(text)
        assert tokenizer.decode(both.answer_ids[:-1]) == mirrored_answer(reversed_answer(text))
        turned += not torch.equal(plain.answer_ids, back.answer_ids)
    assert turned > 0
    from evspec.data.dataset import load_dataset

    first = [s for s in load_dataset(dataset) if s.split == "train"][0]
    stream = read_events(first.event_path, sensor_size=first.sensor_size)
    other_palette = render_eventgpt_frames(stream, task.model.n_frames, size="sensor",
                                           colors={1: (0, 0, 255), 0: (255, 0, 0)})
    processor = task.model.image_processor
    expected = torch.stack([processor(f, return_tensors="pt")["pixel_values"][0] for f in other_palette[::-1]])
    backwards = task._pixels(groups[2][0])
    assert groups[2][0].clip == 0 and not torch.equal(backwards, task._pixels(groups[0][0]))
    assert torch.allclose(backwards, expected, atol=1e-5)
    assert np.any(np.all(other_palette[0] == (255, 0, 0), axis=-1))  # both colours occur: not vacuous
    assert np.any(np.all(other_palette[0] == (0, 0, 255), axis=-1))
    assert torch.equal(task._pixels(groups[3][0]), backwards.flip(-1))


@pytest.mark.filterwarnings("ignore::evspec.models.eventgpt.EventWindowWarning")  # the synthetic 1 s windows
@pytest.mark.parametrize("family", ["eventgpt", "videollava"])
def test_a_batch_gathers_the_pixels_each_example_has_alone(dataset: Path, tmp_path: Path, family: str) -> None:
    """The stacked cache's batch gather gives every example the pixels ``_pixels`` gives it alone,
    and the loss equals the one computed from a per-clip list."""
    from evspec.training.vlm import VLMTrainConfig, prepare_task

    config = VLMTrainConfig(family=family, dataset=str(dataset), size="tiny", eval_questions=0, mirror=True,
                            reverse=True, event_canvas="sensor")
    (tmp_path / "b" / "training").mkdir(parents=True)
    task = prepare_task(config, tmp_path / "b", torch.device("cpu"))
    assert isinstance(task.pixels, torch.Tensor) and task.pixels.shape[0] == len({e.clip for e in task.examples})
    batch = list(range(0, task.n_examples(), 3))
    examples = [task.examples[i] for i in batch]
    assert {(e.mirrored, e.reversed) for e in examples} == {(False, False), (True, False), (False, True), (True, True)}
    for example, pixels in zip(examples, task._batch_pixels(examples)):
        assert torch.equal(pixels, task._pixels(example))
    stacked_loss, _ = task.loss(batch)
    task.pixels = list(task.pixels.unbind(0))  # the path a dataset of unequal clips takes
    listed_loss, _ = task.loss(batch)
    assert torch.equal(stacked_loss, listed_loss)


def test_compiled_blocks_train_as_eager_ones_and_keep_the_checkpoint_keys(dataset: Path, tmp_path: Path) -> None:
    """``--compile``: every LLaMA and CLIP block compiled (here through AOT autograd without code
    generation, which the suite's 2 cores can afford), the same losses and gradients as eager over
    two optimizer steps, evaluation still running (eagerly), and the state dict's keys unchanged."""
    from evspec.training.loop import _optimizer
    from evspec.training.vlm import VLMTrainConfig, compile_blocks, prepare_task

    config = VLMTrainConfig(family="videollava", dataset=str(dataset), size="tiny", eval_questions=2,
                            loop=LoopConfig(steps=2, batch_size=4))
    losses, keys = {}, {}
    for compiled in (False, True):
        (tmp_path / str(compiled) / "training").mkdir(parents=True)
        torch.manual_seed(0)
        task = prepare_task(config, tmp_path / str(compiled), torch.device("cpu"))
        module = task.module()
        keys[compiled] = list(module.state_dict())
        if compiled:
            assert compile_blocks(module, backend="aot_eager") == 2 + 2 + 2  # language model, video and image towers
        optimizer = _optimizer(module, config.loop)
        losses[compiled] = []
        for step in range(2):
            module.train()  # as the loop does before every step; evaluating between steps sets eval()
            loss, _ = task.loss(batch_indices(task.n_examples(), 4, 0, step))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[compiled].append(loss.item())
            module.eval()
            with torch.no_grad():
                assert task.evaluate(2)["n"] == 2
        assert list(module.state_dict()) == keys[compiled]
    assert keys[True] == keys[False]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True][1] < losses[True][0]


def test_video_played_backwards_is_its_frames_in_reverse_order(dataset: Path, tmp_path: Path) -> None:
    from evspec.training.vlm import VLMTrainConfig, prepare_task

    config = VLMTrainConfig(family="videollava", dataset=str(dataset), size="tiny", eval_questions=0, reverse=True)
    (tmp_path / "v" / "training").mkdir(parents=True)
    task = prepare_task(config, tmp_path / "v", torch.device("cpu"))
    n = len(task.examples) // 2
    plain, back = task._pixels(task.examples[0]), task._pixels(task.examples[n])
    assert task.examples[n].reversed and plain.shape[-4] == 8
    assert torch.equal(back, torch.stack([plain[..., i, :, :, :] for i in range(7, -1, -1)], dim=-4))
    out = tmp_path / "cli"
    assert main(_train_args(dataset, out, steps=2) + ["--reverse"]) == 0
    run = json.loads((out / "training" / "config.json").read_text())
    assert run["identity"]["reverse"] is True and run["command"].endswith("--reverse --device cpu")


def test_reverse_is_refused_for_a_single_image_model(dataset: Path) -> None:
    from evspec.training.vlm import VLMTrainConfig

    with pytest.raises(ConfigError, match="reverse needs a clip's frames in time order"):
        VLMTrainConfig(family="llava", dataset=str(dataset), size="tiny", reverse=True)


class _Killed(Exception):
    pass


def test_a_killed_training_resumes_to_the_same_weights(dataset: Path, tmp_path: Path) -> None:
    from evspec.training.loop import LoopConfig
    from evspec.training.run import run_training
    from evspec.training.vlm import VLMTrainConfig

    config = VLMTrainConfig(family="videollava", dataset=str(dataset), size="tiny", eval_questions=0,
                            loop=LoopConfig(steps=7, batch_size=3, lr=3e-3, warmup_steps=1, checkpoint_every=2,
                                            log_every=1, eval_every=100))
    whole = run_training(config, tmp_path / "whole")

    class KillAfter:
        def start(self, total: int, done: int) -> None:
            self.first = done

        def advance(self, step: int, metrics: dict) -> None:
            if step == 5:  # state saved at 4; step 5 is lost
                raise _Killed

        def status(self, text: str) -> None:
            pass

    with pytest.raises(_Killed):
        run_training(config, tmp_path / "killed", progress=KillAfter())
    assert not (tmp_path / "killed" / "config.json").exists()  # no model written as if complete
    resumed = run_training(config, tmp_path / "killed")
    assert resumed.resumed_from == 4 and whole.resumed_from == 0
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "killed" / "training" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 8))  # steps 5.. redone after the resume, none logged twice


def test_bad_training_input_is_one_clear_error(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(dataset, tmp_path / "a", family="nosuch")) == 1
    assert "unknown family" in capsys.readouterr().err
    assert main(["train", "--family", "videollava", "--size", "huge", "--dataset", str(dataset), "--out",
                 str(tmp_path / "b")]) == 1
    assert "unknown model size" in capsys.readouterr().err
    assert main(_train_args(dataset, tmp_path / "b", pixel_cache_dtype="float8")) == 1
    assert "error: --pixel-cache-dtype must be float32, float16 or bfloat16, got 'float8'" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(_train_args(dataset, other)) == 1  # holds something that is not a training run
    assert "holds no evspec training run; choose another --out" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, steps=2)) == 0
    assert main(_train_args(dataset, run, steps=2) + ["--mirror"]) == 1  # other examples: not a resume
    assert "mirror: was False, now True" in capsys.readouterr().err
    assert main(_train_args(dataset, run, steps=4)) == 1  # another config
    err = capsys.readouterr().err
    assert "another config" in err and "or --force to discard it" in err
    assert main(_train_args(dataset, run, steps=4) + ["--force"]) == 0
    import shutil

    no_answers = tmp_path / "noans"
    shutil.copytree(dataset, no_answers)
    rows = json.loads((no_answers / "dataset.json").read_text())
    for row in rows:
        for key in ("answer", "event_visible_answer"):
            row.pop(key, None)
        row.get("scene", {}).pop("qa", None)
    (no_answers / "dataset.json").write_text(json.dumps(rows))
    assert main(_train_args(no_answers, tmp_path / "c")) == 1
    assert "no 'answer' to learn" in capsys.readouterr().err


def test_a_size_the_machine_cannot_hold_is_refused_before_any_work(dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import evspec.memory

    monkeypatch.setattr(evspec.memory, "available_memory_bytes", lambda: 1 << 20)
    assert main(_train_args(dataset, tmp_path / "m")) == 1
    assert not (tmp_path / "m" / "training" / "state.pt").exists()


def test_a_training_starts_from_a_trained_checkpoint_and_refuses_one_of_another_shape(
        dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(_train_args(dataset, first, steps=4)) == 0
    assert main(_train_args(dataset, second, steps=2, init_from=f"videollava:{first}")) == 0
    start = _weights(second / "training" / "init")
    assert start.keys() == _weights(first).keys()
    assert all(torch.equal(start[k], v) for k, v in _weights(first).items())  # its weights, not random ones
    fresh = _weights(tmp_path / "first" / "training" / "init")
    assert not all(torch.equal(start[k], v) for k, v in fresh.items())
    run = json.loads((second / "training" / "config.json").read_text())
    assert run["identity"]["init_from"] == f"videollava:{first}" and f"--init-from videollava:{first}" in run["command"]
    # resumed with another start: another config
    assert main(_train_args(dataset, second, steps=2)) == 1
    assert "init_from: was" in capsys.readouterr().err
    refusals = {
        "eventgpt": (f"eventgpt:{first}", "was not trained by evspec as eventgpt at size tiny"),
        "videollava": ("tiny-videollava", "is a random tiny model"),
    }
    for family, (init, message) in refusals.items():
        out = tmp_path / f"bad-{family}"
        assert main(_train_args(dataset, out, family=family, init_from=init)) == 1
        err = capsys.readouterr().err
        assert message in err and "--init-from" in err and "Traceback" not in err
        assert not out.exists()  # refused before anything was written
    bad_size = _train_args(dataset, tmp_path / "bad-size", init_from=f"videollava:{first}")
    bad_size[bad_size.index("--size") + 1] = "demo-draft"
    assert main(bad_size) == 1
    assert "at size demo-draft" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc (Linux)")
def test_reading_more_clips_than_open_files_allowed_in_workers_is_not_a_broken_pool(dataset: Path) -> None:
    """Tensors sent back from reading workers travel in shared memory and hold a file descriptor
    each in the parent from the moment they arrive: GPU builds of 22,000 and 26,000 clips died at
    the 20,000 open-file limit with BrokenProcessPool, the second after copying each tensor as it
    was taken (workers outran the parent's loop). Here 150 clips are read under a limit of ~60 free
    descriptors by a parent that stalls (3 s) after its first clip while the workers go on."""
    import resource

    from evspec.data.dataset import load_dataset
    from evspec.models.registry import load_model
    from evspec.models.tiny import tiny_checkpoint
    from evspec.training.vlm import preprocess_clips

    samples = load_dataset(dataset) * 25
    folder = tiny_checkpoint("tiny-videollava")
    model = load_model(f"videollava:{folder}", device="cpu", dtype="float32")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 60, hard))
    try:
        pixels = preprocess_clips(model, folder, samples, workers=2, event_canvas="upstream", dtype="float16",
                                  progress=lambda i, n: time.sleep(3) if i == 1 else None)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(pixels) == len(samples)
    alone = preprocess_clips(model, folder, samples[:6], workers=1, event_canvas="upstream", dtype="float16")
    assert all(torch.equal(a, b) for a, b in zip(alone, pixels[6:12]))
