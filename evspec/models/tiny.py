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
from pathlib import Path

import torch

from evspec.errors import ModelError
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


def cache_dir() -> Path:
    """``$EVSPEC_CACHE/tiny`` (default ``~/.cache/evspec/tiny``)."""
    return Path(os.environ.get("EVSPEC_CACHE") or "~/.cache/evspec").expanduser() / "tiny"


def _clip_config(clip: dict = CLIP):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**clip)


def _clip_image_processor(size: int = IMAGE_SIZE):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


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


def _llava_processor(tokenizer, image_size: int, patch_size: int):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(image_size), tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def build_tiny_eventgpt(folder: Path) -> None:
    """EventGPT in upstream's layout: weights with the CLIP tower keys, plus the tower as its own
    folder ``clip_tower/`` that ``mm_visual_tower`` points to (relative to the checkpoint)."""
    from transformers import CLIPVisionModel

    from evspec.models.eventgpt import EventChatModel, save_eventgpt

    tokenizer = _eventgpt_tokenizer()
    clip = _clip_config()
    torch.manual_seed(SEED)
    tower = CLIPVisionModel(clip).eval()
    tower.save_pretrained(folder / "clip_tower")
    _clip_image_processor().save_pretrained(folder / "clip_tower")
    config = _eventgpt_config(LLAMA, clip, len(tokenizer), CONTEXT)
    torch.manual_seed(SEED + 1)
    model = EventChatModel(config).eval()
    model.model.visual_tower.visual_tower.load_state_dict(tower.state_dict())
    save_eventgpt(model, folder)
    tokenizer.save_pretrained(folder)


def build_tiny_videollava(folder: Path) -> None:
    """Video-LLaVA: ``<image>``, ``<video>``, ``<pad>`` after the base vocabulary (as 32000-32002)."""
    from transformers import (
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    tokenizer = _llava_tokenizer(["<image>", "<video>", "<pad>"])
    config = _videollava_config(LLAMA, _clip_config(), tokenizer, len(tokenizer))
    torch.manual_seed(SEED + 2)
    VideoLlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"shortest_edge": IMAGE_SIZE}
    VideoLlavaImageProcessor(size=size, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)


def build_tiny_llava(folder: Path) -> None:
    """LLaVA-1.5: ``<image>``, ``<pad>`` after the base vocabulary; a saved ``LlavaProcessor``."""
    from transformers import LlavaForConditionalGeneration

    tokenizer = _llava_tokenizer(["<image>", "<pad>"])
    config = _llava_config(LLAMA, _clip_config(), tokenizer, len(tokenizer))
    torch.manual_seed(SEED + 3)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    _llava_processor(tokenizer, IMAGE_SIZE, PATCH_SIZE).save_pretrained(folder)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-eventgpt": build_tiny_eventgpt,
    "tiny-videollava": build_tiny_videollava,
    "tiny-llava": build_tiny_llava,
}


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
RANDOM_NAMES = {"random-7b-eventgpt": "eventgpt", "random-7b-videollava": "videollava", "random-7b-llava": "llava"}


def random_model(name: str, device: torch.device, dtype: torch.dtype):  # -> VisionLanguageModel
    """A real-shape model with seeded random weights, built in memory on ``device`` (no 14 GB file)."""
    from transformers import (
        LlavaForConditionalGeneration,
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    from evspec.models.eventgpt import EventChatModel, EventGPT
    from evspec.models.llava import Llava, VideoLlava

    if name not in RANDOM_NAMES:
        raise ModelError(f"unknown random-weight model {name!r}: use one of {', '.join(RANDOM_NAMES)}")
    family = RANDOM_NAMES[name]
    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if family == "eventgpt":
                tokenizer = _eventgpt_tokenizer()
                clip = _clip_config({**CLIP_L, "image_size": 336})
                model = EventChatModel(_eventgpt_config(VICUNA_7B, clip, VOCAB_7B, 2048)).eval()
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
