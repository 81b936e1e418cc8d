"""Video-LLaVA and LLaVA-1.5 through transformers' own classes.

Encoding calls the model's own ``get_video_features`` / ``get_image_features`` (vision tower,
feature layer -2, projector) and the splice repeats what the model's ``forward`` does with them:
the placeholder mask over ``input_ids`` and ``masked_scatter``. The decoupled path therefore
feeds the language model the very tensors ``generate()`` builds internally, and greedy tokens
agree bit for bit (``evspec verify``, tests/models).

Preprocessing:

- Video-LLaVA: 8 frames sampled uniformly (``read_video_frames``), each through the checkpoint's
  ``VideoLlavaImageProcessor`` (shortest edge, centre crop, CLIP mean/std): the classic PIL path.
  ``<video>`` is expanded to frames x (patches + CLS) placeholders, ``VideoLlavaProcessor``'s own
  rule. (``VideoLlavaProcessor`` itself cannot be built without torchvision in transformers 5.x,
  since its video processor needs it; the image processor gives the pixel values Video-LLaVA
  was trained with.)
- LLaVA-1.5: ``LlavaProcessor`` (prompt expansion and pixels) on one image per sample: the middle
  frame of the clip's video; its CLIP image processor on the PIL backend, whatever is installed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evspec.errors import InputError, ModelError
from evspec.models.base import (
    Prepared,
    inference_stage,
    VisionLanguageModel,
    VisualFeatures,
    VisualInput,
)
from evspec.models.clip_pixels import clip_image_processor_class
from evspec.models.eventgpt import greedy_generation_config
from evspec.models.loading import (
    LOADER_ERRORS,
    LoadOptions,
    check_processor_size,
    ensure_prompt_fits,
    from_pretrained_checked,
    read_config_dict,
    require_checkpoint_folder,
)
from evspec.models.tokenizer import load_tokenizer
from evspec.runtime.decode import LanguageModel

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

VIDEO_FRAMES = 8
VIDEO_PROMPT = "USER: <video>\n{query} ASSISTANT:"
IMAGE_PROMPT = "USER: <image>\n{query} ASSISTANT:"


def features_from_output(output: Any) -> torch.Tensor:
    """``get_*_features`` output -> [N, D]. transformers 5.x releases return a ModelOutput whose
    ``pooler_output`` is a tensor [B, P, D] or a list of [P, D]; older ones a tensor or a tuple."""
    value = getattr(output, "pooler_output", None) if not isinstance(output, (torch.Tensor, tuple, list)) else output
    if value is None:
        raise ModelError(f"cannot read visual features from a {type(output).__name__}")
    if isinstance(value, (tuple, list)):
        value = torch.cat([v.reshape(-1, v.shape[-1]) for v in value], dim=0)
    return value.reshape(-1, value.shape[-1])


def _current_output_kwargs(image_processor: Any) -> dict[str, bool]:
    """``VideoLlavaImageProcessor`` of transformers >= 5.2x names its output ``pixel_values`` only when
    asked (the old name warns as deprecated); earlier releases take no such argument."""
    accepted = inspect.signature(image_processor.preprocess).parameters
    return {"return_legacy_image_output": False} if "return_legacy_image_output" in accepted else {}


def splice_placeholders(embed_tokens: nn.Module, input_ids: torch.Tensor, token_id: int, features: torch.Tensor) -> torch.Tensor:
    """The models' own splice: embed ``input_ids``, then ``masked_scatter`` the features into the
    positions holding ``token_id``. [1, L] -> [1, L, D]."""
    embeds = embed_tokens(input_ids)
    mask = (input_ids == token_id).unsqueeze(-1)
    n = int(mask.sum())
    if n * embeds.shape[-1] != features.numel():
        raise ModelError(f"{n} placeholder tokens but {features.shape[0]} visual feature rows")
    return embeds.masked_scatter(mask.expand_as(embeds), features.to(embeds.device, embeds.dtype))


class _LlavaBase(VisionLanguageModel):
    """What Video-LLaVA and LLaVA-1.5 share: a transformers LLaVA-type model and its tokenizer."""

    placeholder: str

    def __init__(self, model: nn.Module, tokenizer, *, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.language_model = LanguageModel.from_causal_lm(model)
        self.placeholder_id = int(tokenizer.convert_tokens_to_ids(self.placeholder))

    @property
    def eos_token_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def _check_fits(self, input_ids: torch.Tensor) -> None:
        ensure_prompt_fits(int(input_ids.shape[-1]), self.language_model.context_length - 1, self.name)

    @inference_stage
    def splice(self, prepared: Prepared, features: VisualFeatures) -> torch.Tensor:
        return splice_placeholders(self.language_model.embed_tokens, prepared.input_ids, self.placeholder_id, features.embeds)

    def splice_batch(self, prepared: Sequence[Prepared], features: Sequence[VisualFeatures], *,
                     pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``masked_scatter`` over the right-padded ids of every sample (placeholders are
        expanded in the ids, so each row keeps its length)."""
        lengths = torch.tensor([int(p.input_ids.shape[-1]) for p in prepared])
        width = int(lengths.max())
        ids = torch.stack([nn.functional.pad(p.input_ids[0], (0, width - p.input_ids.shape[-1]), value=pad_id)
                           for p in prepared]).to(self.device)
        return self.splice(Prepared(ids, prepared[0].pixel_values), VisualFeatures(torch.cat([f.embeds for f in features]))), lengths

    def encode_batch(self, prepared: Sequence[Prepared]) -> list[VisualFeatures]:
        """One tower pass over every sample's frames; each sample has the same number of them."""
        merged = self.encode(Prepared(prepared[0].input_ids, torch.cat([p.pixel_values for p in prepared])))
        return [VisualFeatures(rows) for rows in merged.embeds.chunk(len(prepared))]

    def _pixel_kwargs(self, prepared: Prepared) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def reference_generate(self, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
        config = greedy_generation_config(max_new_tokens, min_new_tokens, self.eos_token_ids, self.tokenizer)
        ids = prepared.input_ids
        out = self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, **self._pixel_kwargs(prepared)
        )
        return out[0, ids.shape[1] :].tolist()


class VideoLlava(_LlavaBase):
    """Video-LLaVA (``VideoLlavaForConditionalGeneration``): 8 frames, 257 tokens each at 224 px."""

    family = "videollava"
    modality = "video"
    placeholder = "<video>"

    def __init__(self, model: nn.Module, tokenizer, image_processor, *, name: str, n_frames: int = VIDEO_FRAMES) -> None:
        super().__init__(model, tokenizer, name=name)
        self.image_processor = image_processor
        self.n_frames = n_frames
        if self.placeholder_id != model.config.video_token_id:
            raise ModelError(
                f"{name}: tokenizer maps <video> to {self.placeholder_id}, config video_token_id is {model.config.video_token_id}"
            )

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.video_tower

    def load(self, sample: Sample) -> VisualInput:
        if sample.video_path is None:
            raise InputError(f"sample {sample.id!r} has no video; Video-LLaVA needs one")
        from evspec.data.video import read_video_frames

        return VisualInput("video", list(read_video_frames(sample.video_path, self.n_frames)))

    def prompt(self, query: str) -> str:
        return VIDEO_PROMPT.format(query=query)

    def preprocess(self, visual: VisualInput, query: str) -> Prepared:
        if not visual.frames:
            raise InputError("no video frames to preprocess")
        out = self.image_processor(list(visual.frames), return_tensors="pt", **_current_output_kwargs(self.image_processor))
        pixels = out["pixel_values"] if "pixel_values" in out else out["pixel_values_images"]
        patch = int(self.model.config.vision_config.patch_size)
        per_frame = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + 1  # CLS kept for video
        text = self.prompt(query).replace(self.placeholder, self.placeholder * (per_frame * len(visual.frames)))
        ids = self.tokenizer(text, return_tensors="pt").input_ids
        self._check_fits(ids)
        return Prepared(input_ids=ids.to(self.device), pixel_values=pixels.unsqueeze(0).to(self.device, self.dtype))

    @inference_stage
    def encode(self, prepared: Prepared) -> VisualFeatures:
        output = self.model.model.get_video_features(
            pixel_values_videos=prepared.pixel_values, vision_feature_layer=self.model.config.vision_feature_layer
        )
        return VisualFeatures(features_from_output(output))

    def _pixel_kwargs(self, prepared: Prepared) -> dict[str, torch.Tensor]:
        return {"pixel_values_videos": prepared.pixel_values}


class Llava(_LlavaBase):
    """LLaVA-1.5 (``LlavaForConditionalGeneration``): one image, 576 tokens (CLS dropped) at 336 px."""

    family = "llava"
    modality = "image"
    placeholder = "<image>"

    def __init__(self, model: nn.Module, processor, *, name: str) -> None:
        super().__init__(model, processor.tokenizer, name=name)
        self.processor = processor
        if self.placeholder_id != model.config.image_token_id:
            raise ModelError(
                f"{name}: tokenizer maps <image> to {self.placeholder_id}, config image_token_id is {model.config.image_token_id}"
            )

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def load(self, sample: Sample) -> VisualInput:
        """The middle frame of the clip's video (index (n-1)//2 of n frames)."""
        if sample.video_path is None:
            raise InputError(f"sample {sample.id!r} has no video; LLaVA takes its middle frame")
        from evspec.data.video import read_video_frames

        return VisualInput("image", [read_video_frames(sample.video_path, 3)[1]])

    def prompt(self, query: str) -> str:
        return IMAGE_PROMPT.format(query=query)

    def preprocess(self, visual: VisualInput, query: str) -> Prepared:
        if len(visual.frames) != 1:
            raise InputError(f"LLaVA-1.5 takes exactly one image, got {len(visual.frames)}")
        out = self.processor(text=self.prompt(query), images=visual.frames[0], return_tensors="pt")
        self._check_fits(out["input_ids"])
        return Prepared(input_ids=out["input_ids"].to(self.device), pixel_values=out["pixel_values"].to(self.device, self.dtype))

    @inference_stage
    def encode(self, prepared: Prepared) -> VisualFeatures:
        config = self.model.config
        output = self.model.model.get_image_features(
            pixel_values=prepared.pixel_values, vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        return VisualFeatures(features_from_output(output))

    def _pixel_kwargs(self, prepared: Prepared) -> dict[str, torch.Tensor]:
        return {"pixel_values": prepared.pixel_values}


# --------------------------------------------------------------------------- loading


def _check_model_type(folder: Path, expected: str) -> None:
    found = read_config_dict(folder).get("model_type")
    if found != expected:
        raise ModelError(f"{folder}: config.json has model_type {found!r}, expected '{expected}'")


def load_videollava(folder: str | Path, options: LoadOptions, *, name: str | None = None) -> VideoLlava:
    """A ``VideoLlavaForConditionalGeneration`` folder (e.g. LanguageBind/Video-LLaVA-7B-hf)."""
    from transformers import (
        VideoLlavaForConditionalGeneration,
        VideoLlavaImageProcessor,
    )

    folder = require_checkpoint_folder(folder)
    _check_model_type(folder, "video_llava")
    if not (folder / "preprocessor_config.json").is_file():
        raise ModelError(f"{folder}: no preprocessor_config.json (the VideoLlavaImageProcessor settings)")
    model = from_pretrained_checked(
        VideoLlavaForConditionalGeneration, folder, options,
        skip_modules=["video_tower", "image_tower", "multi_modal_projector", "lm_head"],
    )
    try:
        image_processor = VideoLlavaImageProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except LOADER_ERRORS as error:
        raise ModelError(f"{folder}: cannot load the VideoLlavaImageProcessor ({type(error).__name__}: {error})") from None
    check_processor_size(image_processor, int(model.config.vision_config.image_size), folder / "preprocessor_config.json")
    return VideoLlava(options.place(model), load_tokenizer(folder), image_processor, name=name or f"videollava:{folder}")


def load_llava(folder: str | Path, options: LoadOptions, *, name: str | None = None) -> Llava:
    """A ``LlavaForConditionalGeneration`` folder (e.g. llava-hf/llava-1.5-7b-hf)."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    folder = require_checkpoint_folder(folder)
    _check_model_type(folder, "llava")
    model = from_pretrained_checked(
        LlavaForConditionalGeneration, folder, options, skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]
    )
    load_tokenizer(folder)  # a clear error when the tokenizer files are missing
    try:
        processor = LlavaProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        # LLaVA-1.5's image processor is CLIP's: the PIL backend, as EventGPT's, so the pixels do not
        # depend on whether torchvision is installed (see clip_image_processor_class)
        processor.image_processor = clip_image_processor_class().from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False)
    except LOADER_ERRORS as error:
        raise ModelError(f"{folder}: cannot load the LlavaProcessor ({type(error).__name__}: {error})") from None
    check_processor_size(processor.image_processor, int(model.config.vision_config.image_size), folder / "processor_config.json")
    return Llava(options.place(model), processor, name=name or f"llava:{folder}")
