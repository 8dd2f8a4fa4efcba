"""Gemma3ForConditionalGeneration: images become soft tokens inside the text stream.

    prompt:  <bos> Describe \\n\\n<start_of_image> [256 x <image_soft_token>] <end_of_image>\\n\\n please.
    embeds:  text ids -> embedding table (x sqrt(hidden));  soft tokens -> SigLIP + projector output
    mask:    causal for text; the 256 tokens of one image see each other in both directions

The soft token id (262,144) is only a placeholder, replaced by image features and never looked
up: one past this library's 262,144-row table, a row of the published 4B-27B checkpoints' 262,208. Module names follow transformers'
`Gemma3ForConditionalGeneration` (`model.vision_tower`, `model.multi_modal_projector`,
`model.language_model`, `lm_head`), so state dicts copy by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
from PIL import Image

from .config import Gemma3Config
from .kv_cache import KVCache
from .masks import image_groups
from .checks import check_input_ids
from .model import Gemma3Base, Gemma3TextModel
from .pan_and_scan import pan_and_scan, preprocess
from .vision import Gemma3MultiModalProjector, SiglipVisionModel

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"  # ids 255999, 256000, 262144


class Gemma3Model(nn.Module):
    """The three parts, named as in the checkpoint: vision tower, projector, language model."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.vision_tower = SiglipVisionModel(cfg.vision)
        self.multi_modal_projector = Gemma3MultiModalProjector(cfg.vision, cfg.hidden_size)
        self.language_model = Gemma3TextModel(cfg)


class Gemma3ForConditionalGeneration(Gemma3Base):
    """Gemma 3 with images: `model(input_ids, pixel_values=...) -> logits [batch, seq, vocab]`."""

    def __init__(self, cfg: Gemma3Config):
        if cfg.vision is None:
            raise ValueError(f"config {cfg.name!r} has no vision tower; use Gemma3ForCausalLM or a 4b/12b/27b config")
        super().__init__(cfg, Gemma3Model(cfg))

    @property
    def text_model(self) -> Gemma3TextModel:
        return self.model.language_model

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random init (see Gemma3Base), and the projector's bare weight matrix too."""
        super().reset_parameters(std)
        self.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, std)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, 3, 896, 896] -> [images, 256, hidden]: SigLIP, then pool, norm and project."""
        vision = self.model.vision_tower(pixel_values.to(self.lm_head.weight.dtype))  # [N, 4096, 1152]
        return self.model.multi_modal_projector(vision)  # [N, 256, hidden]

    def forward(self, input_ids: torch.Tensor, cache: Optional[KVCache] = None, *,
                pixel_values: Optional[torch.Tensor] = None, last_only: bool = False) -> torch.Tensor:
        """Logits [batch, seq, vocab] (or [batch, 1, vocab] with `last_only`).

        Args:
            input_ids: [batch, seq] token ids; each image is a run of `mm_tokens_per_image` soft tokens.
            cache: a KVCache from `new_cache`; positions continue from `cache.length`.
            pixel_values: [images, 3, size, size], the images in the order their soft tokens appear
                (row by row over the batch); an image's tokens must all be in this call.
        """
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        is_image = input_ids == cfg.image_token_id  # [B, T]
        text_ids = input_ids.masked_fill(is_image, cfg.pad_token_id)  # placeholders: never looked up
        check_input_ids(cfg, text_ids)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        n_soft, per_image = int(is_image.sum()), cfg.vision.mm_tokens_per_image
        if n_soft != n_images * per_image:
            raise ValueError(
                f"input_ids hold {n_soft} image soft tokens (id {cfg.image_token_id}) but {n_images} images "
                f"were given, which need {n_images} x {per_image} = {n_images * per_image}; "
                "build the prompt with Gemma3Processor so each image placeholder gets its tokens"
            )
        x = self.model.language_model.embed(text_ids)  # [B, T, hidden], scaled by sqrt(hidden)
        image_ids = None
        if n_images:
            features = self.get_image_features(pixel_values)  # [N, 256, hidden], not scaled
            x = x.masked_scatter(is_image[..., None], features.to(x.dtype))
            image_ids = image_groups(is_image)  # [B, T]: 0, 1, ... per image run, -1 for text
        h = self.model.language_model(x, cache=cache, image_ids=image_ids)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)


def image_sequence(tokens_per_image: int = 256) -> str:
    """How one image appears in the prompt: `\\n\\n<start_of_image>` + soft tokens + `<end_of_image>\\n\\n`."""
    return f"\n\n{BOI}{SOFT * tokens_per_image}{EOI}\n\n"


def expand_prompt(text: str, num_crops: Sequence[int], tokens_per_image: int = 256) -> str:
    """Replace the i-th `<start_of_image>` of `text` by image i's sequence; with Pan&Scan crops, the
    original comes first and its crops follow, worded as transformers' Gemma3Processor does.
    """
    parts = text.split(BOI)
    if len(parts) - 1 != len(num_crops):
        raise ValueError(
            f"the prompt has {len(parts) - 1} image placeholders ({BOI}) but {len(num_crops)} images "
            "were given; write one placeholder where each image goes"
        )
    seq = image_sequence(tokens_per_image)
    out = [parts[0]]
    for n, after in zip(num_crops, parts[1:]):
        if n:
            out.append(f"Here is the original image {seq} and here are some crops to help you see better "
                       + " ".join([seq] * n))
        else:
            out.append(seq)
        out.append(after)
    return "".join(out)


class Gemma3Processor:
    """Text with `<start_of_image>` placeholders + PIL images -> (input_ids [1, T], pixel_values).

    Example: `ids, pixels = Gemma3Processor(tok, cfg)("Describe <start_of_image>", [photo])`.
    `tok` needs `encode(text)`, `decode(ids)` and `piece_to_id(piece)` (a `Gemma3Tokenizer`).
    """

    def __init__(self, tok, cfg: Gemma3Config, do_pan_and_scan: bool = False, **pan_and_scan_kwargs):
        if cfg.vision is None:
            raise ValueError(f"config {cfg.name!r} has no vision tower")
        self.tok, self.cfg = tok, cfg
        self.do_pan_and_scan = do_pan_and_scan
        self.pan_and_scan_kwargs = pan_and_scan_kwargs
        self.special = {BOI: tok.piece_to_id(BOI), EOI: tok.piece_to_id(EOI), SOFT: cfg.image_token_id}

    def encode(self, expanded: str) -> list[int]:
        """Ids of an expanded prompt: the image markers map to their ids, the text between is tokenized."""
        ids = [] if expanded.startswith("<bos>") else [self.cfg.bos_token_id]
        for piece in re.split(f"({BOI}|{EOI}|{SOFT})", expanded):
            if piece in self.special:
                ids.append(self.special[piece])
            elif piece:
                ids += self.tok.encode(piece)
        return ids

    def __call__(self, text: str, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [1, T] and pixel_values [images + crops, 3, size, size] (each original, then its crops)."""
        size = self.cfg.vision.image_size
        groups = [[im, *(pan_and_scan(im, **self.pan_and_scan_kwargs) if self.do_pan_and_scan else [])]
                  for im in images]
        expanded = expand_prompt(text, [len(g) - 1 for g in groups], self.cfg.vision.mm_tokens_per_image)
        input_ids = torch.tensor([self.encode(expanded)])
        pixel_values = torch.stack([preprocess(im, size) for g in groups for im in g]) if groups else None
        return input_ids, pixel_values


def chat_images(messages: Sequence[dict], cfg: Gemma3Config) -> list[Image.Image]:
    """The images of chat messages' `{"type": "image", "image": <PIL image or file path>}` items, in order.

    Refuses image items for a config without a vision tower: a text-only model would read them as text.
    """
    items = [(i, j, item) for i, m in enumerate(messages) if isinstance(m.get("content"), (list, tuple))
             for j, item in enumerate(m["content"]) if item.get("type") == "image"]
    if items and cfg.vision is None:
        raise ValueError(
            f"the messages hold {len(items)} image item(s) (message {items[0][0]}, item {items[0][1]}) but config "
            f"{cfg.name!r} is text-only; use a model with a vision tower (4b, 12b, 27b) or remove the images"
        )
    images = []
    for i, j, item in items:
        image = item.get("image")
        if isinstance(image, (str, Path)):
            image = Image.open(image)
            image.load()  # read now (and close the file)
        if not isinstance(image, Image.Image):
            raise TypeError(f"message {i}, item {j}: an image item needs 'image': a PIL image or a file path, "
                            f"got {image!r:.60}")
        images.append(image)
    return images
