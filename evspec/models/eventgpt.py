"""EventGPT (XduSyL/EventGPT): a LLaVA-style LLaMA that reads event-camera frames.

The classes reproduce upstream's module tree and state-dict keys (``model/EventChatModel.py``), so
its checkpoints load unchanged: ``EventChatModel(LlamaForCausalLM)`` whose ``.model`` is a
``LlamaModel`` carrying ``visual_tower`` (a wrapper holding a ``CLIPVisionModel``, hence keys
``model.visual_tower.visual_tower.vision_model.*`` in upstream's files; transformers 5's CLIP is
flat, so :func:`upstream_key` / ``key_mapping`` translate both ways), ``visual_projector``
(Linear, GELU, Linear) and ``feature_adaptor`` (Linear). Per sample, each of T event frames goes through tower ->
``last_hidden_state`` (CLS kept) -> projector -> adaptor, giving [T, P+1, D]; the block spliced in
place of ``<event>`` is [mean over patches (T rows); mean over time (P+1 rows)] = [T+P+1, D]
(582 rows for 5 frames of CLIP-L/336).

Differences from upstream, on purpose: module sizes come from the configs (upstream hard-codes
1024 -> 4096); the CLIP tower is *built* from a ``CLIPVisionConfig`` and its weights come from the
checkpoint or, failing that, from the folder ``mm_visual_tower`` names (upstream downloads it inside
``__init__``); a prompt that would be truncated at ``tokenizer_model_max_length`` is refused by
``preprocess`` instead of being cut silently.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)

from evspec.errors import EvspecWarning, InputError, ModelError
from evspec.models.base import (
    Prepared,
    VisionLanguageModel,
    inference_stage,
    VisualFeatures,
    VisualInput,
)
from evspec.models.clip_pixels import clip_image_processor_class, clip_pixel_values
from evspec.models.generation import read_generation_config
from evspec.models.loading import (
    LOADER_ERRORS,
    LoadOptions,
    check_config_sizes,
    check_processor_size,
    check_state_dict_keys,
    checkpoint_keys,
    ensure_prompt_fits,
    from_pretrained_checked,
    read_config_dict,
    require_checkpoint_folder,
)
from evspec.models.tokenizer import (
    EVENT_TOKEN,
    EVENT_TOKEN_INDEX,
    add_special_tokens,
    load_tokenizer,
    tokenizer_event_token,
)
from evspec.runtime.decode import LanguageModel

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

MODEL_TYPE = "EventChat_llama"
IGNORE_INDEX = -100
EVENT_PATCH_TOKEN = "<ev_patch>"
EV_START_TOKEN = "<ev_start>"
EV_END_TOKEN = "<ev_end>"
DEFAULT_PROMPT_LIMIT = 2048  # upstream's hard-coded tokenizer_model_max_length
N_EVENT_FRAMES = 5
UPSTREAM_MAX_WINDOW_US = 100_000
"""Upstream's ``process_event_data`` refuses windows with ``t.max() - t.min() >= 100 ms``."""
UPSTREAM_TOKENIZER_LEGACY = True
"""transformers 4.37.2 (upstream's pin) takes ``legacy=True`` when tokenizer_config.json has no key."""
TOWER_PREFIX = "model.visual_tower.visual_tower."
UPSTREAM_TOWER_PREFIX = TOWER_PREFIX + "vision_model."
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VISUAL_TOWER_ENV = "EVSPEC_VISUAL_TOWER"
"""Overrides ``mm_visual_tower`` (a local CLIP folder or a hub name already in the local cache)."""


class EventWindowWarning(EvspecWarning):
    """An event window upstream EventGPT would refuse (100 ms or more): the checkpoint never saw one."""


def warn_if_long_window(duration_us: int, path: object) -> None:
    """Warn (not refuse, as upstream does) about a window of ``UPSTREAM_MAX_WINDOW_US`` or more."""
    if duration_us >= UPSTREAM_MAX_WINDOW_US:
        warnings.warn(
            f"{path}: event window of {duration_us / 1000:.1f} ms; upstream EventGPT refuses windows of "
            f"{UPSTREAM_MAX_WINDOW_US // 1000} ms or more, so its checkpoints were never fed one",
            EventWindowWarning, stacklevel=2,
        )


def conv_eventgpt_v1(query: str) -> str:
    """Upstream's ``conv_eventgpt_v1`` prompt for one question (sep " ", no history)."""
    return f"{SYSTEM} USER: {EV_START_TOKEN}{EVENT_TOKEN}{EV_END_TOKEN}\n{query} ASSISTANT:"


def spatio_temporal_tokens(features: torch.Tensor) -> torch.Tensor:
    """[T, S, D] -> [T + S, D]: temporal tokens (mean over patches) then spatial (mean over time)."""
    if features.dim() != 3:
        raise ValueError(f"expected features [T, S, D], got {tuple(features.shape)}")
    return torch.cat([features.mean(dim=1), features.mean(dim=0)], dim=0)


# --------------------------------------------------------------------------- transformers classes


class EventChatConfig(LlamaConfig):
    """Upstream's config: a ``LlamaConfig`` plus ``mm_*`` keys. evspec adds ``visual_tower_config``
    (the CLIP tower's config dict), filled in by the loader and never required in a checkpoint."""

    model_type = MODEL_TYPE


class VisualTower(nn.Module):
    """Holds the CLIP vision model under ``visual_tower`` (upstream's key layout)."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.visual_tower = CLIPVisionModel(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_tower(pixel_values).last_hidden_state


def tower_config_of(config: EventChatConfig) -> CLIPVisionConfig:
    raw = getattr(config, "visual_tower_config", None)
    if raw is None:
        raise ModelError(
            "EventChatConfig has no visual_tower_config: load EventGPT checkpoints with "
            "evspec.models.registry.load_model('eventgpt:PATH'), which resolves mm_visual_tower"
        )
    return raw if isinstance(raw, CLIPVisionConfig) else CLIPVisionConfig(**raw)


class EventChatLlamaModel(LlamaModel):
    config_class = EventChatConfig

    def __init__(self, config: EventChatConfig) -> None:
        super().__init__(config)
        tower = tower_config_of(config)
        self.visual_tower = VisualTower(tower)
        self.visual_projector = nn.Sequential(
            nn.Linear(tower.hidden_size, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        if hasattr(config, "event_feature_adaptor"):  # upstream tests presence, not value
            self.feature_adaptor = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()


class EventChatModel(LlamaForCausalLM):
    """Upstream's ``EventChatModel``; ``generate(input_ids, event_tensors=...)`` is its monolithic path."""

    config_class = EventChatConfig

    def __init__(self, config: EventChatConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = EventChatLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def prompt_limit(self) -> int:
        return int(getattr(self.config, "tokenizer_model_max_length", None) or DEFAULT_PROMPT_LIMIT)

    def visval_encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> tower ``last_hidden_state`` (CLS kept) -> projector: [B, P+1, D]."""
        return self.model.visual_projector(self.model.visual_tower(pixel_values))

    def frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames [N, 3, H, W] -> tower -> projector -> adaptor: [N, P+1, D], each frame on its own."""
        features = self.visval_encode(pixels)
        adaptor = getattr(self.model, "feature_adaptor", None)
        return adaptor(features) if adaptor is not None else features

    def encode_events(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """One sample's T frames [3, H, W] -> the [T+P+1, D] block, one frame at a time as upstream."""
        return spatio_temporal_tokens(torch.cat([self.frame_features(frame.unsqueeze(0)) for frame in frames]))

    def splice_events(self, input_ids: torch.Tensor, event_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """One sequence's ids [L] with ``EVENT_TOKEN_INDEX`` placeholders -> embeddings [L', D]:
        text chunks embedded together, the i-th placeholder replaced by ``event_features[i]``,
        then cut to ``prompt_limit`` as upstream does."""
        where = torch.where(input_ids == EVENT_TOKEN_INDEX)[0].tolist()
        if len(where) != len(event_features):
            raise ValueError(f"{len(where)} event placeholders but {len(event_features)} feature blocks")
        bounds = [-1, *where, input_ids.shape[0]]
        chunks = [input_ids[bounds[i] + 1 : bounds[i + 1]] for i in range(len(bounds) - 1)]
        text = torch.split(self.model.embed_tokens(torch.cat(chunks)), [c.shape[0] for c in chunks], dim=0)
        pieces: list[torch.Tensor] = []
        for i, chunk in enumerate(text):
            pieces.append(chunk)
            if i < len(event_features):
                pieces.append(event_features[i].to(chunk.device, chunk.dtype))
        return torch.cat(pieces)[: self.prompt_limit]

    def prepare_inputs_labels_for_multimodal(
        self, input_ids: torch.Tensor, event_tensors: Sequence[Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's splice for a batch (labels omitted): returns right-padded ``inputs_embeds``
        [B, L', D] and the attention mask [B, L']."""
        features = [self.encode_events(frames) for frames in event_tensors]
        rows, k = [], 0
        for ids in input_ids:
            n = int((ids == EVENT_TOKEN_INDEX).sum())
            rows.append(self.splice_events(ids, features[k : k + n]))
            k += n
        longest = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=embeds.device)
        for i, row in enumerate(rows):
            embeds[i, : row.shape[0]] = row
            mask[i, : row.shape[0]] = 1
        return embeds, mask

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, event_tensors=None, **kwargs):  # type: ignore[override]
        """Upstream's monolithic generate: encode + splice inside, then LLaMA ``generate`` from
        ``inputs_embeds`` (so only new tokens come back). ``event_tensors``: one list of [3, H, W]
        frames per sample, or one such list for a single sample."""
        if event_tensors is None:
            raise ValueError("EventGPT.generate needs event_tensors")
        if "inputs_embeds" in kwargs:
            raise ValueError("inputs_embeds is not supported; pass input_ids and event_tensors")
        if isinstance(event_tensors, torch.Tensor) or not isinstance(event_tensors[0], (list, tuple)):
            event_tensors = [list(event_tensors)]
        embeds, mask = self.prepare_inputs_labels_for_multimodal(inputs, event_tensors)
        if bool(mask.all()):
            mask = None  # upstream passes no mask for unpadded input; generate() builds all-ones
        return super().generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


AutoConfig.register(MODEL_TYPE, EventChatConfig, exist_ok=True)
AutoModelForCausalLM.register(EventChatConfig, EventChatModel, exist_ok=True)


# --------------------------------------------------------------------------- evspec model


class EventGPT(VisionLanguageModel):
    """EventGPT behind evspec's stage interface."""

    family = "eventgpt"
    modality = "event_frames"

    def __init__(
        self, model: EventChatModel, tokenizer, image_processor, *, name: str, n_frames: int = N_EVENT_FRAMES,
        event_canvas: str = "upstream", checkpoint_generation_config: dict | None = None,
    ) -> None:
        from evspec.data.render import check_event_canvas

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.n_frames = n_frames
        self.event_canvas = check_event_canvas(event_canvas)
        self.checkpoint_generation_config = checkpoint_generation_config
        # evspec's own checkpoints (evspec train) learnt from its 1 s clips: no upstream window limit.
        self.trained_on_upstream_windows = "evspec_training" not in model.config.to_dict()
        self.language_model = LanguageModel.from_causal_lm(model)

    def preprocessing(self) -> dict[str, object]:
        """How this model turns a sample into inputs (for run records): the event canvas, the
        tokenizer's ``legacy`` mode, and the checkpoint's ``generation_config.json`` (None if absent)."""
        return {
            "event_canvas": self.event_canvas, "n_frames": self.n_frames,
            "tokenizer_legacy": getattr(self.tokenizer, "legacy", None),
            "checkpoint_generation_config": self.checkpoint_generation_config,
        }

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.model.visual_tower

    @property
    def eos_token_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def load(self, sample: Sample) -> VisualInput:
        """Frames rendered from the sample's raw events as upstream's ``process_event_data`` does
        (its chunking, on ``event_canvas``); the sample's listed event images only when it has no
        event file, since their rendering is whatever made them."""
        if sample.event_path is not None:
            from evspec.data.events import read_events
            from evspec.data.render import render_eventgpt_input

            # On the sensor canvas the frame is the sensor: a 160x120 clip drawn on DSEC's default
            # 640x480 would fill a corner of it.
            stream = read_events(sample.event_path, sensor_size=sample.sensor_size)
            if self.trained_on_upstream_windows:
                warn_if_long_window(stream.duration_us, sample.event_path)
            return VisualInput("event_frames", render_eventgpt_input(stream, self.n_frames, self.event_canvas))
        if sample.event_image_paths:
            from evspec.data.video import read_image

            return VisualInput("event_frames", [read_image(p) for p in sample.event_image_paths])
        raise InputError(f"sample {sample.id!r} has neither event images nor an event file; EventGPT needs one")

    def prompt(self, query: str) -> str:
        return conv_eventgpt_v1(query)

    def n_visual_tokens(self, n_frames: int) -> int:
        tower = self.model.model.visual_tower.visual_tower.config
        return n_frames + (tower.image_size // tower.patch_size) ** 2 + 1

    def preprocess(self, visual: VisualInput, query: str) -> Prepared:
        if not visual.frames:
            raise InputError("no event frames to preprocess")
        ids = tokenizer_event_token(self.prompt(query), self.tokenizer)
        n_prompt = len(ids) - 1 + self.n_visual_tokens(len(visual.frames))
        ensure_prompt_fits(n_prompt, min(self.model.prompt_limit, self.language_model.context_length), self.name)
        # all frames at once: what upstream's call per frame gives (tested), with less overhead
        pixels = clip_pixel_values(self.image_processor, visual.frames)
        return Prepared(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            pixel_values=pixels.to(self.device, self.dtype),
        )

    @inference_stage
    def encode(self, prepared: Prepared) -> VisualFeatures:
        """The frames through the tower as one batch. Upstream's ``encode_events`` (what
        ``reference_generate`` runs) sends them one at a time; the tower sees each frame on its
        own, so the features are the same within float rounding (tested), at a third of the time
        on a CPU: 2.6 ms instead of 9.2 ms for the demo draft's five frames, paid at every
        speculative prefill."""
        return VisualFeatures(spatio_temporal_tokens(self.model.frame_features(prepared.pixel_values)))

    @inference_stage
    def encode_batch(self, prepared: Sequence[Prepared]) -> list[VisualFeatures]:
        """Every sample's frames through the tower in one pass, then each sample's spatio-temporal
        aggregation."""
        features = self.model.frame_features(torch.cat([p.pixel_values for p in prepared]))
        sizes = [int(p.pixel_values.shape[0]) for p in prepared]
        if len(set(sizes)) == 1:  # one aggregation for the batch: [B, T, S, D] -> [B, T + S, D]
            blocks = features.reshape(len(sizes), sizes[0], *features.shape[1:])
            return [VisualFeatures(rows) for rows in torch.cat([blocks.mean(dim=2), blocks.mean(dim=1)], dim=1).unbind(0)]
        return [VisualFeatures(spatio_temporal_tokens(block)) for block in features.split(sizes)]

    @inference_stage
    def splice(self, prepared: Prepared, features: VisualFeatures) -> torch.Tensor:
        return self.model.splice_events(prepared.input_ids[0], [features.embeds]).unsqueeze(0)

    @inference_stage
    def splice_batch(self, prepared: Sequence[Prepared], features: Sequence[VisualFeatures], *,
                     pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``splice`` of every row as one embedding lookup and one gather. Why not a loop of
        ``splice``: a training batch of 128 rows paid ~15 small operations a row, forward and
        backward, which on a GPU cost more time than the model. Rows with one placeholder and
        feature blocks of one shape (training's case); others go through ``splice`` one by one."""
        ids = [p.input_ids[0].cpu() for p in prepared]
        where = [torch.where(row == EVENT_TOKEN_INDEX)[0] for row in ids]
        shapes = {tuple(f.embeds.shape) for f in features}
        if any(w.numel() != 1 for w in where) or len(shapes) != 1 or len(ids) != len(features):
            return super().splice_batch(prepared, features, pad_id=pad_id)
        n_features = next(iter(shapes))[0]
        lengths = torch.tensor([min(row.numel() - 1 + n_features, self.model.prompt_limit) for row in ids])
        width = int(lengths.max())
        text_ids = torch.cat(ids)
        text_ids[text_ids == EVENT_TOKEN_INDEX] = pad_id  # its row is never gathered
        text = self.model.model.embed_tokens(text_ids.to(self.device))
        blocks = torch.stack([f.embeds for f in features]).to(text.device, text.dtype)
        source = torch.cat([text, blocks.reshape(-1, text.shape[-1]), text.new_zeros(1, text.shape[-1])])
        # index[b, j]: the source row of output position j of row b (the zero row past its length)
        at = torch.cat(where)[:, None]
        sizes = torch.tensor([row.numel() for row in ids])
        offset = (sizes.cumsum(0) - sizes)[:, None]
        j = torch.arange(width)[None, :]
        block = text.shape[0] + torch.arange(len(ids))[:, None] * n_features + (j - at)
        index = torch.where(j < at, offset + j, torch.where(j < at + n_features, block, offset + j - n_features + 1))
        index = torch.where(j < lengths[:, None], index, source.shape[0] - 1)
        return source[index.to(source.device)], lengths

    @torch.inference_mode()
    def reference_generate(self, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
        config = greedy_generation_config(max_new_tokens, min_new_tokens, self.eos_token_ids, self.tokenizer)
        out = self.model.generate(prepared.input_ids, event_tensors=list(prepared.pixel_values), generation_config=config)
        return out[0].tolist()


def greedy_generation_config(max_new_tokens: int, min_new_tokens: int, eos: list[int], tokenizer) -> GenerationConfig:
    """Plain greedy decoding, whatever ``generation_config.json`` a checkpoint ships."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return GenerationConfig(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos, pad_token_id=pad, temperature=None, top_p=None, top_k=None,
    )


# --------------------------------------------------------------------------- saving and loading


def upstream_key(key: str) -> str:
    """A state-dict key in upstream's layout. transformers 5.x's ``CLIPVisionModel`` is flat
    (``embeddings.*``); upstream's (4.37) nests it under ``vision_model.``."""
    if key.startswith(TOWER_PREFIX) and not key.startswith(UPSTREAM_TOWER_PREFIX):
        return UPSTREAM_TOWER_PREFIX + key[len(TOWER_PREFIX) :]
    return key


def _tower_key_mapping(model_keys: set[str]) -> dict[str, str] | None:
    """``from_pretrained`` key mapping from upstream's tower keys to this transformers' modules."""
    if any(k.startswith(UPSTREAM_TOWER_PREFIX) for k in model_keys):
        return None  # this transformers nests vision_model itself
    return {"^" + UPSTREAM_TOWER_PREFIX.replace(".", r"\."): TOWER_PREFIX}


def save_eventgpt(model: EventChatModel, folder: str | Path) -> None:
    """``save_pretrained``, then the weights renamed to upstream's key layout and evspec's
    ``visual_tower_config`` dropped from ``config.json``: the folder looks like upstream's."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    model.save_pretrained(folder)
    for shard in folder.glob("*.safetensors"):
        state = load_file(shard)
        save_file({upstream_key(k): v for k, v in state.items()}, shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        raw = json.loads(index.read_text())
        raw["weight_map"] = {upstream_key(k): v for k, v in raw["weight_map"].items()}
        index.write_text(json.dumps(raw, indent=2) + "\n")
    config_path = folder / "config.json"
    raw = json.loads(config_path.read_text())
    raw.pop("visual_tower_config", None)
    config_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")



def resolve_visual_tower(name: str, folder: Path) -> Path:
    """A local folder holding the CLIP tower's ``config.json``: ``$EVSPEC_VISUAL_TOWER``, else
    ``mm_visual_tower`` as a path (absolute, or relative to the checkpoint folder), else a hub name
    already in the local Hugging Face cache (never downloaded)."""
    name = os.environ.get(VISUAL_TOWER_ENV) or name
    for candidate in (Path(name).expanduser(), folder / name):
        if (candidate / "config.json").is_file():
            return candidate
    tried = [str(Path(name).expanduser()), str(folder / name)]
    if name.count("/") == 1 and not name.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception as error:
            tried.append(f"hub cache '{name}' ({type(error).__name__})")
    raise ModelError(
        f"{folder}: the CLIP tower '{name}' (config mm_visual_tower) is not available locally; tried "
        f"{', '.join(tried)}. Put the CLIP folder there, or set {VISUAL_TOWER_ENV}=/path/to/clip"
    )


def _image_processor(folder: Path, tower_folder: Path, tower: CLIPVisionConfig):  # -> CLIPImageProcessorPil
    """From the checkpoint folder, else the tower's folder, else CLIP's defaults at the tower's size."""
    CLIPImageProcessor = clip_image_processor_class()

    for where in (folder, tower_folder):
        config_file = where / "preprocessor_config.json"
        if config_file.is_file():
            try:
                processor = CLIPImageProcessor.from_pretrained(str(where), local_files_only=True, trust_remote_code=False)
            except LOADER_ERRORS as error:
                raise ModelError(f"{config_file}: cannot load the image processor ({type(error).__name__}: {error})") from None
            check_processor_size(processor, int(tower.image_size), config_file)
            return processor
    size = int(tower.image_size)
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def checkpoint_event_canvas(raw_config: dict) -> str:
    """The event canvas a checkpoint was trained with: evspec's own checkpoints record it
    (``evspec_event_canvas``); upstream's were trained on upstream's per-chunk canvas."""
    value = raw_config.get("evspec_event_canvas", "upstream")
    return value if isinstance(value, str) else "upstream"


def load_eventgpt(
    folder: str | Path, options: LoadOptions, *, name: str | None = None, event_canvas: str | None = None,
) -> EventGPT:
    """Load an upstream-layout EventGPT checkpoint folder (see the module docstring).

    Preprocessed as upstream's code does by default: its event chunking and per-chunk canvas
    (``event_canvas="sensor"``: one sensor-sized canvas; None: the canvas the checkpoint records
    it was trained with, else upstream's), and its tokenizer's ``legacy=True``
    when ``tokenizer_config.json`` does not say."""
    folder = require_checkpoint_folder(folder)
    raw = read_config_dict(folder)
    if raw.get("model_type") != MODEL_TYPE:
        raise ModelError(f"{folder}: config.json has model_type {raw.get('model_type')!r}, expected '{MODEL_TYPE}'")
    try:
        config = EventChatConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except LOADER_ERRORS as error:
        raise ModelError(f"{folder / 'config.json'}: not an EventGPT config ({type(error).__name__}: {error})") from None
    if not getattr(config, "mm_visual_tower", None):
        raise ModelError(f"{folder}: config.json has no mm_visual_tower (the CLIP vision tower to use)")
    tower_folder = resolve_visual_tower(str(config.mm_visual_tower), folder)
    check_config_sizes(tower_folder)
    try:
        tower_config = CLIPVisionConfig.from_pretrained(str(tower_folder), local_files_only=True, trust_remote_code=False)
    except LOADER_ERRORS as error:
        raise ModelError(f"{tower_folder / 'config.json'}: not a CLIP config ({type(error).__name__}: {error})") from None
    config.visual_tower_config = tower_config.to_dict()

    found = {upstream_key(k) for k in checkpoint_keys(folder)}
    tower_in_file = any(k.startswith(TOWER_PREFIX) for k in found)
    try:
        with torch.device("meta"):
            model_keys = set(EventChatModel(config).state_dict())
    except LOADER_ERRORS as error:
        raise ModelError(f"{folder / 'config.json'}: describes no buildable model ({type(error).__name__}: {error})") from None
    expected = {upstream_key(k) for k in model_keys}
    tower_keys = {k for k in model_keys if k.startswith(TOWER_PREFIX)}
    allowed_missing = set() if tower_in_file else tower_keys
    if config.tie_word_embeddings:
        allowed_missing.add("lm_head.weight")
    check_state_dict_keys(expected, found, folder, allowed_missing={upstream_key(k) for k in allowed_missing})

    model = from_pretrained_checked(
        EventChatModel, folder, options, config=config, allowed_missing=allowed_missing,
        skip_modules=["visual_tower", "visual_projector", "feature_adaptor", "lm_head"],
        key_mapping=_tower_key_mapping(model_keys),
    )
    if not tower_in_file:
        _load_tower_weights(model, tower_folder, options)

    tokenizer = load_tokenizer(folder, legacy_if_absent=UPSTREAM_TOKENIZER_LEGACY)
    if getattr(config, "mm_use_im_patch_token", True):
        add_special_tokens(tokenizer, [EVENT_PATCH_TOKEN])
    if getattr(config, "mm_use_im_start_end", False):
        add_special_tokens(tokenizer, [EV_START_TOKEN, EV_END_TOKEN])
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # upstream's inference does exactly this
    model = options.place(model)
    return EventGPT(
        model, tokenizer, _image_processor(folder, tower_folder, tower_config), name=name or f"eventgpt:{folder}",
        event_canvas=event_canvas or checkpoint_event_canvas(raw), checkpoint_generation_config=read_generation_config(folder),
    )


def _load_tower_weights(model: EventChatModel, tower_folder: Path, options: LoadOptions) -> None:
    """The checkpoint has no tower keys: take them from the CLIP folder (a CLIPVisionModel or a full
    CLIPModel checkpoint, as openai/clip-vit-large-patch14-336 is)."""
    try:
        checkpoint_keys(tower_folder)
    except ModelError as error:
        raise ModelError(f"the checkpoint holds no vision-tower weights, and the CLIP folder has none: {error}") from error
    tower = from_pretrained_checked(
        CLIPVisionModel, tower_folder, LoadOptions(torch.device("cpu"), options.torch_dtype),
        ignored_prefixes=("text_model.", "text_projection.", "visual_projection.", "logit_scale"),
    )
    target = model.model.visual_tower.visual_tower
    target.load_state_dict(tower.state_dict(), strict=True)
