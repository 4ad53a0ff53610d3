"""Captions to text-encoder states, with CLIP skip as sd-scripts applies it to SD 1.x."""

from __future__ import annotations

import torch


# Characters kept per token the tokenizer can keep: no CLIP token is this long, so what
# trains is unchanged, but a runaway caption (a megabyte of tags) is not tokenised whole
# every time its image is drawn.
CHARACTERS_PER_TOKEN = 64


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:  # noqa: ANN001 - CLIPTokenizer
    limit = tokenizer.model_max_length * CHARACTERS_PER_TOKEN
    return tokenizer([caption[:limit] for caption in captions], padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def final_layer_norm(text_encoder) -> torch.nn.Module:  # noqa: ANN001 - CLIPTextModel
    text_encoder = getattr(text_encoder, "module", text_encoder)  # inside a DDP wrapper
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:  # noqa: ANN001
    """The states the U-Net attends to. clip_skip 1 is the last layer (already normed);
    clip_skip N takes the N-th last layer's output through the final layer norm."""
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    output = text_encoder(input_ids, output_hidden_states=True)
    return final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])
