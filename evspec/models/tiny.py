"""Tiny checkpoints of the three families: real classes, seeded random weights, a few hundred KB.

Each is BUILT from a config, SAVED with ``save_pretrained`` (EventGPT in its upstream key layout,
its CLIP tower also as a folder that ``mm_visual_tower`` names), and LOADED back by the registry
through exactly the path a real checkpoint takes. They live under ``$EVSPEC_CACHE`` (default
``~/.cache/evspec``) ``/tiny/<name>-v1/``. A build writes into a temporary sibling folder and
renames it into place, so parallel test workers never see a half-written checkpoint; the loser of
a race deletes its copy. Bump ``VERSION`` whenever a build changes.

Sizes: LLaMA 2 layers, hidden 64, 4 heads, context 1024; CLIP 28x28 images, 7x7 patches (16 + CLS
tokens per image), 2 layers, width 32. All three share the tiny base vocabulary
(:mod:`evspec.models.tokenizer`) plus their own special tokens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evspec.errors import ConfigError, ModelError
from evspec.models.tokenizer import add_special_tokens, build_base_tokenizer

VERSION = "v1"
SEED = 0
IMAGE_SIZE = 28
PATCH_SIZE = 7
CONTEXT = 1024

# initializer_range 0.2 (not LLaMA's 0.02): random tiny weights then give varied, input-dependent
# greedy tokens instead of one token repeated, which keeps the equality tests meaningful.
LLAMA = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-6, "bos_token_id": 1,
    "eos_token_id": 2, "initializer_range": 0.2,
}
CLIP = {
    "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32, "initializer_range": 0.05,
}


@dataclass(frozen=True)
class ModelSize:
    """The shape of a checkpoint evspec builds: its LLaMA language model, its CLIP tower, and how
    frames reach the tower. ``full_frame``: resize the whole frame to the tower's square input (the
    synthetic scenes keep objects anywhere in a 4:3 frame, which a centre crop would cut off);
    otherwise the real models' shortest-edge resize and centre crop."""

    llama: dict[str, Any]
    clip: dict[str, Any]
    context: int = CONTEXT
    full_frame: bool = False


# Trained sizes (``evspec train --size``). On a CPU a token's cost is mostly per-layer overhead, so
# depth sets it: the target is deep and narrow (30 layers; LLaMA-7B has 32), the draft has 2 layers
# (docs/BENCHMARKS.md has the measured ratio; 4 layers learnt no faster). The towers see 128x128
# frames in 32-pixel patches (16 + CLS tokens a frame): shapes, colours and motion stay visible,
# and Video-LLaVA's 8 frames stay a 136-token prompt. Together the shipped pair stays under 16 MB in float16.
_DEMO_CLIP = {
    "image_size": 128, "patch_size": 32, "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3,
    "num_attention_heads": 4, "projection_dim": 96, "initializer_range": 0.02,
}
_DEMO_LLAMA = {
    "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
    "initializer_range": 0.02,
}
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(LLAMA, CLIP),
    "demo-target": ModelSize({**_DEMO_LLAMA, "num_hidden_layers": 30}, _DEMO_CLIP, full_frame=True),
    "demo-draft": ModelSize({**_DEMO_LLAMA, "num_hidden_layers": 2}, _DEMO_CLIP, full_frame=True),
}


def model_size(name: str) -> ModelSize:
    if name not in SIZES:
        raise ConfigError(f"unknown model size {name!r}: use one of {', '.join(SIZES)}")
    return SIZES[name]


def cache_dir() -> Path:
    """``$EVSPEC_CACHE/tiny`` (default ``~/.cache/evspec/tiny``)."""
    return Path(os.environ.get("EVSPEC_CACHE") or "~/.cache/evspec").expanduser() / "tiny"


def _clip_config(clip: dict = CLIP):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**clip)


def _frame_sizes(size: int, full_frame: bool) -> dict[str, Any]:
    if full_frame:
        return {"size": {"height": size, "width": size}, "do_center_crop": False, "crop_size": {"height": size, "width": size}}
    return {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}


def _clip_image_processor(size: int = IMAGE_SIZE, full_frame: bool = False):
    from evspec.models.clip_pixels import clip_image_processor_class

    return clip_image_processor_class()(**_frame_sizes(size, full_frame))


def _eventgpt_tokenizer():
    from evspec.models.eventgpt import EV_END_TOKEN, EV_START_TOKEN, EVENT_PATCH_TOKEN

    tokenizer = build_base_tokenizer()
    add_special_tokens(tokenizer, [EVENT_PATCH_TOKEN])
    add_special_tokens(tokenizer, [EV_START_TOKEN, EV_END_TOKEN])
    return tokenizer


def _eventgpt_config(llama: dict, clip, vocab_size: int, context: int):
    from evspec.models.eventgpt import EventChatConfig

    return EventChatConfig(
        **llama, vocab_size=vocab_size, mm_visual_tower="clip_tower", event_feature_adaptor=True,
        mm_use_im_patch_token=True, mm_use_im_start_end=True, tokenizer_model_max_length=context,
        visual_tower_config=clip.to_dict(), architectures=["EventChatModel"],
    )


def _llava_tokenizer(special: list[str]):
    tokenizer = build_base_tokenizer()
    add_special_tokens(tokenizer, special)
    tokenizer.pad_token = "<pad>"
    return tokenizer


def _videollava_config(llama: dict, clip, tokenizer, vocab_size: int):
    from transformers import LlamaConfig, VideoLlavaConfig

    return VideoLlavaConfig(
        vision_config=clip,
        text_config=LlamaConfig(**llama, vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )


def _llava_config(llama: dict, clip, tokenizer, vocab_size: int):
    from transformers import LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision_config=clip,
        text_config=LlamaConfig(**llama, vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )


def _llava_processor(tokenizer, image_size: int, patch_size: int, full_frame: bool = False):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(image_size, full_frame), tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def build_eventgpt(folder: Path, size: ModelSize = SIZES["tiny"], seed: int = SEED) -> None:
    """EventGPT in upstream's layout: weights with the CLIP tower keys, plus the tower as its own
    folder ``clip_tower/`` that ``mm_visual_tower`` points to (relative to the checkpoint)."""
    from transformers import CLIPVisionModel

    from evspec.models.eventgpt import EventChatModel, save_eventgpt

    tokenizer = _eventgpt_tokenizer()
    clip = _clip_config(size.clip)
    torch.manual_seed(seed)
    tower = CLIPVisionModel(clip).eval()
    tower.save_pretrained(folder / "clip_tower")
    _clip_image_processor(clip.image_size, size.full_frame).save_pretrained(folder / "clip_tower")
    config = _eventgpt_config(size.llama, clip, len(tokenizer), size.context)
    torch.manual_seed(seed + 1)
    model = EventChatModel(config).eval()
    model.model.visual_tower.visual_tower.load_state_dict(tower.state_dict())
    save_eventgpt(model, folder)
    tokenizer.save_pretrained(folder)


def build_videollava(folder: Path, size: ModelSize = SIZES["tiny"], seed: int = SEED + 2) -> None:
    """Video-LLaVA: ``<image>``, ``<video>``, ``<pad>`` after the base vocabulary (as 32000-32002)."""
    from transformers import (
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    tokenizer = _llava_tokenizer(["<image>", "<video>", "<pad>"])
    config = _videollava_config(size.llama, _clip_config(size.clip), tokenizer, len(tokenizer))
    torch.manual_seed(seed)
    VideoLlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    VideoLlavaImageProcessor(**_frame_sizes(int(size.clip["image_size"]), size.full_frame)).save_pretrained(folder)


def build_llava(folder: Path, size: ModelSize = SIZES["tiny"], seed: int = SEED + 3) -> None:
    """LLaVA-1.5: ``<image>``, ``<pad>`` after the base vocabulary; a saved ``LlavaProcessor``."""
    from transformers import LlavaForConditionalGeneration

    tokenizer = _llava_tokenizer(["<image>", "<pad>"])
    config = _llava_config(size.llama, _clip_config(size.clip), tokenizer, len(tokenizer))
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor = _llava_processor(tokenizer, int(size.clip["image_size"]), int(size.clip["patch_size"]), size.full_frame)
    processor.save_pretrained(folder)


FAMILY_BUILDERS: dict[str, Callable[..., None]] = {
    "eventgpt": build_eventgpt, "videollava": build_videollava, "llava": build_llava,
}
BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-eventgpt": build_eventgpt,
    "tiny-videollava": build_videollava,
    "tiny-llava": build_llava,
}


def build_checkpoint(family: str, size: str, folder: Path, seed: int) -> None:
    """A freshly initialised checkpoint of ``family`` at ``size`` in ``folder`` (the family's real
    layout), seeded: the start of ``evspec train``."""
    if family not in FAMILY_BUILDERS:
        raise ConfigError(f"unknown model family {family!r}: use one of {', '.join(FAMILY_BUILDERS)}")
    FAMILY_BUILDERS[family](folder, model_size(size), seed)


def tiny_checkpoint(name: str) -> Path:
    """The cached folder of tiny model ``name``, built first if missing (atomically)."""
    if name not in BUILDERS:
        raise ModelError(f"unknown tiny model {name!r}: use one of {', '.join(BUILDERS)}")
    folder = cache_dir() / f"{name}-{VERSION}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{uuid.uuid4().hex[:8]}-", dir=folder.parent))
    try:
        BUILDERS[name](tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- real shapes, random weights

# Vicuna-7B (LLaMA-2-7B shape) and CLIP ViT-L/14: what EventGPT-7B, Video-LLaVA-7B and LLaVA-1.5-7B are
# built from. With random weights these time the real work where no checkpoint can be had; their
# answers are noise. The vocabulary is Video-LLaVA's 32064 for all three (EventGPT's is 32003).
VICUNA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)
CLIP_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              projection_dim=768, patch_size=14)
VOCAB_7B = 32064
# The oracle's draft at 7B shapes (``random-0.2b-eventgpt``, and ``benchmarks/gpu_spec.py``'s small
# draft): a ~0.2B LLaMA with the 32k vocabulary, so a drafted token costs what a small draft's does.
SMALL_DRAFT_LLAMA = dict(
    hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16,
    max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
)
RANDOM_NAMES = {"random-7b-eventgpt": "eventgpt", "random-7b-videollava": "videollava", "random-7b-llava": "llava",
                "random-0.2b-eventgpt": "eventgpt"}
# Each family's greedy walk t -> t + shift (make_decisive): distinct, so no two random models agree
# on a token by construction (a model drafting for itself still does, as a real one would).
DECISIVE_SHIFT = {"random-7b-videollava": 1, "random-7b-llava": 2, "random-7b-eventgpt": 3}


def make_decisive(lm: Any, shift: int = 1, embed_scale: float = 50.0, write_scale: float = 0.01) -> Any:
    """Random weights with wide greedy margins at the same cost: the input embeddings scaled up,
    every layer's writes into the residual stream (attention ``o_proj``, MLP ``down_proj``) scaled
    down, and the LM head tied to a copy of the embeddings rolled by ``shift`` rows, so greedy
    decoding walks t -> t + shift with a logit margin of ~70 (against ~1 between the top two of 32k
    random logits). Why: with purely random weights the top logits nearly tie, and in bf16 a verify
    pass (k + 1 rows) and a one-token step run different GEMM kernels, so ties flip, the speculative
    output leaves the target's after a few tokens, and the oracle's answer key no longer applies.
    Scaling changes no shape and no kernel: every pass costs what it costs with real weights.
    ``lm``: an :class:`evspec.runtime.decode.LanguageModel`; changed in place and returned."""
    with torch.no_grad():
        lm.embed_tokens.weight.mul_(embed_scale)
        for layer in lm.body.layers:
            layer.self_attn.o_proj.weight.mul_(write_scale)
            layer.mlp.down_proj.weight.mul_(write_scale)
        lm.lm_head.weight.copy_(torch.roll(lm.embed_tokens.weight, shift, dims=0) / embed_scale)
    return lm


def random_model(name: str, device: torch.device, dtype: torch.dtype):  # -> VisionLanguageModel
    """A real-shape model with seeded random weights, built in memory on ``device`` (no 14 GB file).
    The ``random-7b-*`` language models are made decisive (:func:`make_decisive`), so speculative
    runs stay token-identical in 16-bit and the oracle's answer key holds; ``random-0.2b-eventgpt``
    (the oracle's draft at these shapes, whose tokens the oracle never uses) keeps plain random weights."""
    if name not in RANDOM_NAMES:
        raise ModelError(f"unknown random-weight model {name!r}: use one of {', '.join(RANDOM_NAMES)}")
    model = _random_model(name, device, dtype)
    if name in DECISIVE_SHIFT:
        make_decisive(model.language_model, DECISIVE_SHIFT[name])
    return model


def _random_model(name: str, device: torch.device, dtype: torch.dtype):  # -> VisionLanguageModel
    from transformers import (
        LlavaForConditionalGeneration,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    from evspec.models.eventgpt import EventChatModel, EventGPT
    from evspec.models.llava import Llava, VideoLlava

    family = RANDOM_NAMES[name]
    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if family == "eventgpt":
                tokenizer = _eventgpt_tokenizer()
                clip = _clip_config({**CLIP_L, "image_size": 336})
                llama = SMALL_DRAFT_LLAMA if name == "random-0.2b-eventgpt" else VICUNA_7B
                model = EventChatModel(_eventgpt_config(llama, clip, VOCAB_7B, 2048)).eval()
                return EventGPT(model, tokenizer, _clip_image_processor(336), name=name)
            if family == "videollava":
                tokenizer = _llava_tokenizer(["<image>", "<video>", "<pad>"])
                config = _videollava_config(VICUNA_7B, _clip_config({**CLIP_L, "image_size": 224}), tokenizer, VOCAB_7B)
                size = {"shortest_edge": 224}
                processor = VideoLlavaImageProcessor(size=size, crop_size={"height": 224, "width": 224})
                return VideoLlava(VideoLlavaForConditionalGeneration(config).eval(), tokenizer, processor, name=name)
            tokenizer = _llava_tokenizer(["<image>", "<pad>"])
            config = _llava_config(VICUNA_7B, _clip_config({**CLIP_L, "image_size": 336}), tokenizer, VOCAB_7B)
            return Llava(LlavaForConditionalGeneration(config).eval(), _llava_processor(tokenizer, 336, 14), name=name)
    finally:
        torch.set_default_dtype(previous)
