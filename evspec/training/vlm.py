"""``evspec train``: a VLM of one family, from scratch or from a checkpoint it trained, on an evspec clip dataset.

The model is built at a named size (:data:`evspec.models.tiny.SIZES`) in the family's real layout,
loaded back through the registry like any checkpoint, and trained through the stage interface the
benchmark times (``load`` -> ``preprocess`` -> ``encode_batch`` -> ``splice`` -> the language
model): there is no second copy of the forward pass. The loss is next-token cross-entropy on the
answer tokens only (and the EOS after them), with the prompt in the family's own template.

What each family learns: Video-LLaVA and LLaVA the full ``answer``; EventGPT the
``event_visible_answer`` (what its sensor can see). Every question the synthetic builder wrote for
a clip's scene is a training example, so one clip teaches all four question types. With
``colour_context``, EventGPT also learns each full ``answer`` that differs from its event-visible
one in colour words alone, the colour words (and the article before one) read but not predicted:
as a draft it continues the target's text, and one that had never read a colour word named the
shape after one right 45% of the time, against 94% in its own answers.

Each clip's pixels are read and preprocessed once (in worker processes) and kept on the device
(in ``pixel_cache_dtype``: float16 halves what tens of thousands of clips take); the answers are
tokenised once. With ``mirror``, every question is also learnt on its clip mirrored left to right,
with "left" and "right" swapped in its answer (exact for the synthetic builder's answers, see
:func:`evspec.data.synth.questions.mirrored_answer`): twice the distinct inputs for no extra clips.
With ``reverse``, every question is also learnt on its clip played backwards, each direction
turned around in its answer (:func:`evspec.data.synth.questions.reversed_answer`): the frames in
reverse order, and for EventGPT the two polarity colours swapped too (a brightening edge played
backwards darkens). Close, not exact: Video-LLaVA's 8 frames of a 20-frame clip are not spaced
symmetrically (reversed, they are up to one frame off), and an event image keeps each pixel's last
event where the reversed stream would keep its first.

The trained model is written over ``--out`` in the family's layout (weights, ``config.json``,
tokenizer, processor), model files moved into place with ``config.json`` last; the run's own files
(``training/``: ``config.json`` with everything that made it, ``state.pt``, ``metrics.jsonl``,
plots) sit beside them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evspec.data.dataset import Sample, load_dataset
from evspec.data.synth.questions import mirrored_answer, reversed_answer
from evspec.data.synth.scenes import COLOURS
from evspec.errors import ConfigError, InputError
from evspec.models.base import Prepared, VisionLanguageModel
from evspec.training.evaluate import Question, evaluate_model, questions_of, summarize
from evspec.training.loop import LoopConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FAMILY_ANSWERS = {"videollava": "answer", "llava": "answer", "eventgpt": "event_visible_answer"}
RUN_FOLDER = "training"
IGNORE = -100


@dataclass(frozen=True)
class VLMTrainConfig:
    """Everything that decides a training run (its identity for resume, and ``config.json``)."""

    family: str
    dataset: str
    size: str
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval_questions: int = 64
    max_new_tokens: int = 64
    event_canvas: str = "upstream"
    init_seed: int = 0
    init_from: str | None = None  # start from this trained checkpoint's weights (same family and size), not random ones
    save_dtype: str = "float32"
    mirror: bool = False  # also learn each clip mirrored left to right (synthetic answers only)
    reverse: bool = False  # also learn each clip played backwards (synthetic answers only)
    pixel_cache_dtype: str = "float32"  # the preprocessed clips kept on the device
    colour_context: bool = False  # EventGPT also learns on the full answers, colour words read, not predicted
    compile: bool = False  # regional torch.compile of the training steps (speed only: not in the run's identity)
    allow_outside_root: bool = False  # dataset rows may name files outside the dataset folder

    def __post_init__(self) -> None:
        from evspec.models.tiny import model_size

        if self.family not in FAMILY_ANSWERS:
            raise ConfigError(f"unknown family {self.family!r}: use one of {', '.join(FAMILY_ANSWERS)}")
        model_size(self.size)
        for name in ("save_dtype", "pixel_cache_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name} must be float32, float16 or bfloat16, got {getattr(self, name)!r}",
                                  parameters=[name])
        if self.eval_questions < 0 or self.max_new_tokens < 1:
            raise ConfigError("eval_questions must be >= 0 and max_new_tokens >= 1")
        if self.reverse and self.family == "llava":
            raise ConfigError("reverse needs a clip's frames in time order; LLaVA sees one image",
                              parameters=["reverse"])
        if self.colour_context and self.family != "eventgpt":
            raise ConfigError(f"colour_context is for the event model (it cannot see colour); {self.family} learns "
                              "the full answer anyway", parameters=["colour_context"])
        if self.loop.fsdp:  # its export saves the family's layout from the module, not gathered shards
            raise ConfigError("fsdp is for alignment heads (evspec align train); a VLM trains with DDP",
                              parameters=["fsdp"])

    @property
    def answer_field(self) -> str:
        return FAMILY_ANSWERS[self.family]

    def identity(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Example:
    clip: int  # index into the clips' pixel cache
    prompt_ids: torch.Tensor  # [L] with the family's placeholder(s), on the CPU
    answer_ids: torch.Tensor  # [A] answer tokens + EOS, on the CPU
    mirrored: bool = False  # the clip's pixels mirrored left to right (its answer already is)
    reversed: bool = False  # the clip's frames in reverse order (its answer already is)
    learnt: torch.Tensor | None = None  # [A] bool: which answer tokens carry loss (None: all)

    def targets(self) -> torch.Tensor:
        """The answer's ids as labels: IGNORE where a token is read but not learnt."""
        if self.learnt is None:
            return self.answer_ids
        return torch.where(self.learnt, self.answer_ids, torch.full_like(self.answer_ids, IGNORE))


def training_questions(samples: Sequence[Sample], answer_field: str) -> list[Question]:
    questions = [q for q in questions_of(samples, all_types=True) if q.reference(answer_field)]
    if not questions:
        raise InputError(f"the dataset's training rows have no '{answer_field}' to learn")
    return questions


_COLOUR_WORDS = "|".join(COLOURS)
# A colour word and the article before it ("a red", "an orange": the article's form follows the colour).
_COLOUR_SPAN = re.compile(rf"\b(?:(?:an|a|An|A) )?(?:{_COLOUR_WORDS})\b")


def without_colours(answer: str) -> str:
    """``answer`` with its colour words taken out ("an orange star" -> "a star", "The red circle" ->
    "The circle"): what the event camera could say of the same scene, had it seen every object."""
    def keep_article(match: re.Match[str]) -> str:
        words = match.group(0).split(" ")
        return "A" if words[0] in ("A", "An") else "a" if len(words) == 2 else ""
    return re.sub(r"  +", " ", _COLOUR_SPAN.sub(keep_article, answer)).strip()


def colour_read_not_learnt(tokenizer: Any, answer: str) -> tuple[list[int], list[bool]]:
    """``answer``'s token ids, and for each whether it is learnt: False on a colour word and on the
    article before one, which the event model can read but never predict."""
    encoded = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    spans = [m.span() for m in _COLOUR_SPAN.finditer(answer)]
    learnt = [not any(start < end_span and end > start_span for start_span, end_span in spans)
              for start, end in encoded.offset_mapping]
    return list(encoded.input_ids), learnt


# ----------------------------------------------------------------------------- pixels, once per clip


_WORKER_MODEL: VisionLanguageModel | None = None
_WORKER_DTYPE = torch.float32


def _init_worker(folder: str, family: str, event_canvas: str, dtype: str) -> None:
    global _WORKER_MODEL, _WORKER_DTYPE
    torch.set_num_threads(1)
    _WORKER_MODEL = _load(folder, family, "cpu", event_canvas)
    _WORKER_DTYPE = DTYPES[dtype]


def _pixels_in_worker(sample: Sample) -> tuple[np.ndarray, tuple[int, ...]]:
    """The clip's pixels as raw bytes and a shape: they travel through the pool's pipe by value.
    A torch tensor would travel in shared memory and hold one file descriptor in the parent from
    the moment it arrives; workers that outrun the parent's loop piled up thousands of them, and a
    GPU build of 26,000 clips died at the open-file limit (BrokenProcessPool)."""
    assert _WORKER_MODEL is not None
    pixels = _pixels(_WORKER_MODEL, sample, _WORKER_DTYPE).contiguous()
    return pixels.view(torch.uint8).numpy(), tuple(pixels.shape)


def _from_worker(raw: np.ndarray, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _pixels(model: VisionLanguageModel, sample: Sample, dtype: torch.dtype) -> torch.Tensor:
    # cast in the worker: the parent then never holds a float32 copy of every clip
    return model.preprocess(model.load(sample), sample.query).pixel_values.cpu().to(dtype)


def preprocess_clips(model: VisionLanguageModel, folder: Path, samples: Sequence[Sample], workers: int,
                     event_canvas: str, progress: Callable[[int, int], None] | None = None,
                     dtype: str = "float32") -> list[torch.Tensor]:
    """Each clip's pixel tensor in ``dtype``, through the model's own ``load`` + ``preprocess``; in
    ``workers`` processes (each with its own copy of the checkpoint's processor) when ``workers > 1``."""
    out: list[torch.Tensor] = []
    if workers <= 1:
        for i, sample in enumerate(samples):
            out.append(_pixels(model, sample, DTYPES[dtype]))
            if progress:
                progress(i + 1, len(samples))
        return out
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no forked torch threads or CUDA state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(str(folder), model.family, event_canvas, dtype)) as pool:
        for i, (raw, shape) in enumerate(pool.map(_pixels_in_worker, samples, chunksize=8)):
            out.append(_from_worker(raw, shape, DTYPES[dtype]))
            if progress:
                progress(i + 1, len(samples))
    return out


def _load(folder: str | Path, family: str, device: str | torch.device, event_canvas: str) -> VisionLanguageModel:
    from evspec.models.registry import load_model

    return load_model(f"{family}:{folder}", device=device, dtype="float32", event_canvas=event_canvas)


# ----------------------------------------------------------------------------- the task


class VLMTask:
    """``evspec.training.loop.Task`` for a family VLM on answer tokens."""

    loss_weight_key = "answer_tokens"  # the loss is a mean over answer tokens (data-parallel ranks weigh by it)

    def __init__(self, config: VLMTrainConfig, model: VisionLanguageModel, pixels: torch.Tensor | list[torch.Tensor],
                 examples: list[Example], eval_questions: list[Question], out: Path) -> None:
        self.config = config
        self.model = model
        self.pixels = pixels
        self.examples = examples
        self.eval_questions = eval_questions
        self.out = out
        self.pad_id = int(model.eos_token_ids[0])  # any id: padded rows are masked out and carry no label

    def module(self) -> nn.Module:
        return self.model.trainable_module

    def n_examples(self) -> int:
        return len(self.examples)

    def loss(self, batch: Sequence[int]) -> tuple[torch.Tensor, dict[str, float]]:
        model, lm = self.model, self.model.language_model
        examples = [self.examples[i] for i in batch]
        # The answer follows the prompt in one sequence, spliced like any prompt at inference.
        # Ids stay on the CPU until the splice: per-row work here is host arithmetic, not GPU launches.
        prepared = [Prepared(torch.cat([e.prompt_ids, e.answer_ids]).unsqueeze(0), pixels)
                    for e, pixels in zip(examples, self._batch_pixels(examples))]
        embeds, lengths = model.splice_batch(prepared, model.encode_batch(prepared), pad_id=self.pad_id)
        targets = torch.full(embeds.shape[:2], IGNORE, dtype=torch.long)
        for row, (e, length) in enumerate(zip(examples, lengths.tolist())):
            # position j predicts token j + 1: the last prompt row predicts the first answer token
            targets[row, length - len(e.answer_ids) - 1 : length - 1] = e.targets()
        targets = targets.to(embeds.device)
        mask = (torch.arange(embeds.shape[1]) < lengths[:, None]).long().to(embeds.device)
        hidden = lm.body(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        answer_rows = targets != IGNORE
        logits = lm.lm_head(hidden[answer_rows]).float()
        gold = targets[answer_rows]
        loss = nn.functional.cross_entropy(logits, gold)
        correct = (logits.argmax(-1) == gold).sum()
        return loss, {"answer_tokens": float(gold.numel()), "correct_tokens": float(correct)}

    def _batch_pixels(self, examples: Sequence[Example]) -> Sequence[torch.Tensor]:
        """Each example's pixels, as :meth:`_pixels` gives them; from a stacked cache in a few batch
        operations (one gather, one cast, one flip each for the mirrored and the reversed rows)
        instead of several small ones per question, each a kernel launch on a GPU."""
        if isinstance(self.pixels, list):
            return [self._pixels(e) for e in examples]
        device = self.pixels.device
        batch = self.pixels.index_select(0, torch.tensor([e.clip for e in examples], device=device))
        batch = batch.to(self.model.dtype)
        views = {"reversed": lambda x: played_backwards(self.model, x), "mirrored": lambda x: x.flip(-1)}
        for flag, view in views.items():
            rows = [i for i, e in enumerate(examples) if getattr(e, flag)]
            if rows:
                at = torch.tensor(rows, device=device)
                batch[at] = view(batch[at])
        return batch.unbind(0)

    def _pixels(self, example: Example) -> torch.Tensor:
        pixels = self.pixels[example.clip].to(self.model.dtype)
        if example.reversed:
            pixels = played_backwards(self.model, pixels)
        return pixels.flip(-1) if example.mirrored else pixels  # every family's pixels end in width

    def evaluate(self, step: int) -> dict[str, Any]:
        if not self.eval_questions:
            return {}
        # Generation eager: its one-token steps with a cache would only add compiled variants.
        with torch.compiler.set_stance("force_eager"):
            judged = evaluate_model(self.model, self.eval_questions, max_new_tokens=self.config.max_new_tokens)
        summary = summarize(judged)
        field_summary = summary.get(self.config.answer_field, {})
        return {"exact_match": field_summary.get("exact_match"), "f1": field_summary.get("f1"),
                "exact_match_by_type": {k: v["exact_match"] for k, v in field_summary.get("by_type", {}).items()},
                "n": field_summary.get("n", 0)}

    def export(self) -> None:
        save_trained(self.model, self.out, self.config)


# ----------------------------------------------------------------------------- saving


MODEL_FILES_LAST = "config.json"


def save_trained(model: VisionLanguageModel, out: Path, config: VLMTrainConfig) -> None:
    """The trained weights over ``out`` in the family's layout: written to a temporary folder,
    then moved in file by file with ``config.json`` last, so a folder with a config is complete."""
    from evspec.models.loading import quiet_transformers

    dtype = DTYPES[config.save_dtype]
    module = model.trainable_module
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        original = next(module.parameters()).dtype
        module.to(dtype)
        try:
            with quiet_transformers():
                _save_family(model, tmp)
        finally:
            module.to(original)
        _record_training(tmp / "config.json", config)
        (out / MODEL_FILES_LAST).unlink(missing_ok=True)  # incomplete until the new config lands
        for path in sorted(tmp.rglob("*"), key=lambda p: p.name == MODEL_FILES_LAST):
            if path.is_file():
                dest = out / path.relative_to(tmp)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_family(model: VisionLanguageModel, folder: Path) -> None:
    if model.family == "eventgpt":
        _save_eventgpt(model, folder)
        return
    model.trainable_module.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    processor = getattr(model, "processor", None) or getattr(model, "image_processor")
    processor.save_pretrained(folder)


def _save_eventgpt(model: VisionLanguageModel, folder: Path) -> None:
    """Upstream's layout; the trained tower's weights live in the main file, its folder
    (``mm_visual_tower``) keeps only the config and the image processor."""
    from evspec.models.eventgpt import save_eventgpt

    save_eventgpt(model.model, folder)  # type: ignore[attr-defined]
    model.tokenizer.save_pretrained(folder)
    tower = folder / str(model.model.config.mm_visual_tower)  # type: ignore[attr-defined]
    tower.mkdir(parents=True, exist_ok=True)
    model.model.model.visual_tower.visual_tower.config.save_pretrained(tower)  # type: ignore[attr-defined]
    model.image_processor.save_pretrained(tower)  # type: ignore[attr-defined]


def _record_training(config_path: Path, config: VLMTrainConfig) -> None:
    """Name in the checkpoint's config how it was made, and how EventGPT frames were drawn for it."""
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    raw["evspec_training"] = {"family": config.family, "size": config.size, "answer_field": config.answer_field,
                              "steps": config.loop.steps}
    if config.family == "eventgpt":
        raw["evspec_event_canvas"] = config.event_canvas
    config_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- setup


def init_source(config: VLMTrainConfig) -> Path | None:
    """The checkpoint folder ``init_from`` names, checked: one that ``evspec train`` made for the
    same family and size (its ``config.json`` says so) and, for EventGPT, the same event canvas;
    ``None`` without ``init_from`` (random weights)."""
    if config.init_from is None:
        return None
    from evspec.errors import ModelError
    from evspec.models.loading import read_config_dict, require_checkpoint_folder
    from evspec.models.registry import parse_name

    try:
        family, folder = parse_name(config.init_from)
    except ModelError as error:
        raise ConfigError(f"init_from: {error}", parameters=["init_from"]) from None
    if folder is None:
        raise ConfigError(f"init_from={config.init_from!r} is a random tiny model; name a trained checkpoint",
                          parameters=["init_from"])
    if family != config.family:
        raise ConfigError(f"init_from={config.init_from!r} is a {family} checkpoint; this run trains {config.family}",
                          parameters=["init_from"])
    raw = read_config_dict(require_checkpoint_folder(folder))
    made = raw.get("evspec_training")
    if not isinstance(made, dict) or made.get("family") != config.family or made.get("size") != config.size:
        raise ConfigError(f"init_from: {folder} was not trained by evspec as {config.family} at size {config.size} "
                          f"(its config.json's evspec_training: {made!r})", parameters=["init_from"])
    canvas = raw.get("evspec_event_canvas", "upstream")
    if config.family == "eventgpt" and canvas != config.event_canvas:
        raise ConfigError(f"init_from: {folder} was trained on the {canvas!r} event canvas, this run uses "
                          f"{config.event_canvas!r}", parameters=["init_from", "event_canvas"])
    return folder


def ensure_init_checkpoint(config: VLMTrainConfig, out: Path) -> Path:
    """``out/training/init``: the checkpoint training starts from, made once (under torchrun, by
    rank 0 before the others look for it): a copy of ``init_from``'s model files (so a resume never
    depends on that folder again), else a fresh random one of the size."""
    from evspec.models.loading import quiet_transformers
    from evspec.models.tiny import build_checkpoint

    init = out / RUN_FOLDER / "init"
    if not (init / "config.json").is_file():
        source = init_source(config)
        tmp = Path(tempfile.mkdtemp(prefix=".init-", dir=out / RUN_FOLDER))
        if source is not None:  # its model files only, not a training run inside it
            shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(RUN_FOLDER, ".*"))
        else:
            with quiet_transformers():
                build_checkpoint(config.family, config.size, tmp, config.init_seed)
        if init.exists():
            shutil.rmtree(init)
        os.replace(tmp, init)
    return init


def prepare_task(config: VLMTrainConfig, out: Path, device: torch.device, *, workers: int = 1,
                 progress: Callable[[str, int, int], None] | None = None) -> VLMTask:
    """Dataset -> examples; a fresh checkpoint of the size (or the one ``out`` already holds from an
    earlier, interrupted run: its weights come from ``state.pt`` anyway); pixels on the device."""
    samples = load_dataset(config.dataset, allow_outside_root=config.allow_outside_root)
    train_samples = [s for s in samples if s.split == "train"] or [s for s in samples if s.split != "test"]
    if not train_samples:
        raise InputError(f"{config.dataset}: no training rows (split 'train')")
    test_samples = [s for s in samples if s.split == "test"]
    init = ensure_init_checkpoint(config, out)
    model = _load(init, config.family, device, config.event_canvas)
    questions = training_questions(train_samples, config.answer_field)
    clip_of = {s.id: i for i, s in enumerate(train_samples)}
    tokenizer, eos = model.tokenizer, model.eos_token_ids[0]
    prompts: dict[str, torch.Tensor] = {}
    examples = []
    for reversed_ in (False, True) if config.reverse else (False,):
        for mirrored in (False, True) if config.mirror else (False,):
            for q in questions:
                if q.query not in prompts:
                    prompts[q.query] = prompt_ids(model, q.query)
                answer = q.reference(config.answer_field)
                answer = reversed_answer(answer) if reversed_ else answer
                answer = mirrored_answer(answer) if mirrored else answer
                answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
                examples.append(Example(clip_of[q.sample.id], prompts[q.query], torch.tensor(answer_ids + [eos]),
                                        mirrored, reversed_))
                full = q.reference("answer") if config.colour_context else None
                if full:
                    full = reversed_answer(full) if reversed_ else full
                    full = mirrored_answer(full) if mirrored else full
                    # only where the two answers differ in colour words alone: the learnt tokens are
                    # then the event-visible answer's, and no object the event camera missed is named
                    if full != answer and without_colours(full) == answer:
                        ids, learnt = colour_read_not_learnt(tokenizer, full)
                        examples.append(Example(clip_of[q.sample.id], prompts[q.query], torch.tensor(ids + [eos]),
                                                mirrored, reversed_, torch.tensor(learnt + [True])))
    if config.colour_context and not any(e.learnt is not None for e in examples):
        raise InputError(f"{config.dataset}: colour_context found no training answer that differs from its "
                         "event_visible_answer in colour words alone")
    pixels = on_device(preprocess_clips(model, init, train_samples, workers, config.event_canvas,
                                        (lambda i, n: progress("reading clips", i, n)) if progress else None,
                                        dtype=config.pixel_cache_dtype), device)
    eval_questions = questions_of(test_samples, all_types=True)[: config.eval_questions]
    if config.compile:
        compile_blocks(model.trainable_module)
    return VLMTask(config, model, pixels, examples, eval_questions, out)


def compile_blocks(module: nn.Module, backend: str = "inductor") -> int:
    """Regional compilation: each transformer block (LLaMA decoder layer, CLIP encoder layer)
    compiled in place, with dynamic shapes (answers vary in length). Identical blocks share one
    compiled graph, so compiling takes seconds, not minutes; the state dict's keys are unchanged.
    Why: a small model's training step on a GPU is bound by launching its many small kernels,
    which the compiled blocks fuse. Returns the number of blocks compiled."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    blocks = [m for m in module.modules() if isinstance(m, (LlamaDecoderLayer, CLIPEncoderLayer))]
    for block in blocks:
        block.compile(backend=backend, dynamic=True)
    return len(blocks)


def on_device(pixels: list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """The clips' pixels on the device: one [N, ...] tensor when every clip has the same shape (a
    batch then gathers its clips in one operation), else the list. Filled clip by clip, so the
    device never holds two copies."""
    if len({(tuple(p.shape), p.dtype) for p in pixels}) != 1:
        return [p.to(device) for p in pixels]
    stacked = torch.empty((len(pixels), *pixels[0].shape), dtype=pixels[0].dtype, device=device)
    for i, clip in enumerate(pixels):
        stacked[i].copy_(clip)
    return stacked


def played_backwards(model: VisionLanguageModel, pixels: torch.Tensor) -> torch.Tensor:
    """A clip's preprocessed frames played backwards: the frame axis (the 4th from the end in every
    family's pixels) reversed; EventGPT's event images also swap their polarity colours (red, p=1,
    and blue, p=0, on white: the red and blue channels trade places, through the processor's
    per-channel normalisation)."""
    pixels = pixels.flip(-4)
    if model.family != "eventgpt":
        return pixels
    processor = model.image_processor  # type: ignore[attr-defined]
    mean = torch.tensor(processor.image_mean, dtype=torch.float32, device=pixels.device)[:, None, None]
    std = torch.tensor(processor.image_std, dtype=torch.float32, device=pixels.device)[:, None, None]
    raw = pixels.float() * std + mean
    return ((raw[..., [2, 1, 0], :, :] - mean) / std).to(pixels.dtype)


def prompt_ids(model: VisionLanguageModel, query: str) -> torch.Tensor:
    """The prompt's ids as the family's own ``preprocess`` makes them (placeholders expanded as at
    inference). They do not depend on the pixels, so blank frames of the model's input count do."""
    return model.preprocess(_blank_input(model), query).input_ids[0].cpu()


def _blank_input(model: VisionLanguageModel):  # -> VisualInput
    import numpy as np

    from evspec.models.base import VisualInput

    n = {"video": getattr(model, "n_frames", 8), "event_frames": getattr(model, "n_frames", 5), "image": 1}[model.modality]
    return VisualInput(model.modality, [np.full((480, 640, 3), 255, np.uint8) for _ in range(n)])
