"""CLIP captions to text-encoder states, with CLIP skip and long captions as sd-scripts does them.

A caption of up to ``max_token_length`` tokens (75, 150 or 225) is tokenised to
``max_token_length + 2`` ids (BOS, the tokens, EOS and padding) and cut into chunks of 75,
each given a BOS in front and an end id behind, so that every chunk is the 77 ids the text
encoder was trained on. The chunks are encoded apart (CLIP skip applied to each) and their
states joined again: the first chunk keeps its BOS state, the last its end state, and the
chunks in between give only their 75 token states -- 152 states for 150, 227 for 225.
"""

from __future__ import annotations

import torch

from core.config.schema import MAX_TOKEN_LENGTHS

# Characters kept per token the tokenizer can keep: no CLIP token is this long, so what
# trains is unchanged, but a runaway caption (a megabyte of tags) is not tokenised whole
# every time its image is drawn.
CHARACTERS_PER_TOKEN = 64

CHUNK_TOKENS = 75  # caption tokens per text-encoder pass: its 77 positions less BOS and end
DEFAULT_MAX_TOKEN_LENGTH = 75


def character_limit(max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> int:
    """How many characters of a caption are tokenised for ``max_token_length`` tokens."""
    return (max_token_length + 2) * CHARACTERS_PER_TOKEN


def _check_length(max_token_length: int) -> None:
    if max_token_length not in MAX_TOKEN_LENGTHS:
        raise ValueError(f"training.max_token_length is {max_token_length}; choose one of "
                         + ", ".join(str(n) for n in MAX_TOKEN_LENGTHS))


def tokenize(tokenizer, captions: list[str],  # noqa: ANN001 - CLIPTokenizer
             max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH) -> torch.Tensor:
    """Token ids of ``captions``: (batch, 77) for 75 tokens, (batch, chunks, 77) for 150 or 225."""
    _check_length(max_token_length)
    limit = character_limit(max_token_length)
    window = tokenizer.model_max_length  # 77
    length = max_token_length + 2 if max_token_length > CHUNK_TOKENS else window
    ids = tokenizer([caption[:limit] for caption in captions], padding="max_length", truncation=True,
                    max_length=length, return_tensors="pt").input_ids
    if max_token_length <= CHUNK_TOKENS:
        return ids
    return torch.stack([_chunks(tokenizer, row, max_token_length) for row in ids])


def _chunks(tokenizer, ids: torch.Tensor, max_token_length: int) -> torch.Tensor:  # noqa: ANN001
    """(chunks, 77) ids of one caption's ``max_token_length + 2`` ids, as sd-scripts'
    get_input_ids cuts them: the caption's BOS, 75 ids, and the sequence's last id (an EOS
    for SD 1.x, where padding is EOS; EOS or padding for SD 2.x)."""
    bos, last = ids[:1], ids[-1:]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for start in range(1, max_token_length + 1, CHUNK_TOKENS):
        chunk = torch.cat([bos, ids[start:start + CHUNK_TOKENS], last])
        if pad != eos:
            # Padding that is not EOS (SD 2.x): a chunk cut inside the caption ends in EOS,
            # and a chunk with no caption left starts <BOS> <EOS>, as a short caption does.
            if chunk[-2] not in (eos, pad):
                chunk[-1] = eos
            if chunk[1] == pad:
                chunk[1] = eos
        chunks.append(chunk)
    return torch.stack(chunks)


def final_layer_norm(text_encoder) -> torch.nn.Module:  # noqa: ANN001 - CLIPTextModel
    text_encoder = getattr(text_encoder, "module", text_encoder)  # inside a DDP wrapper
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _encode_window(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:  # noqa: ANN001
    if clip_skip <= 1:
        return text_encoder(input_ids)[0]
    output = text_encoder(input_ids, output_hidden_states=True)
    return final_layer_norm(text_encoder)(output.hidden_states[-clip_skip])


def encode(text_encoder, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:  # noqa: ANN001
    """The states the U-Net attends to. clip_skip 1 is the last layer (already normed);
    clip_skip N takes the N-th last layer's output through the final layer norm.

    ``input_ids`` as ``tokenize`` gives them: (batch, 77) gives (batch, 77, dim); (batch,
    chunks, 77) gives (batch, chunks * 75 + 2, dim)."""
    if input_ids.dim() == 2:
        return _encode_window(text_encoder, input_ids, clip_skip)
    batch, count, window = input_ids.shape
    states = _encode_window(text_encoder, input_ids.reshape(batch * count, window), clip_skip)
    return join_chunks(states, batch)


def join_chunks(states: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch * chunks, 77, dim) states of chunked captions -> (batch, chunks * 75 + 2, dim):
    the first chunk's BOS state, every chunk's 75 token states, the last chunk's end state."""
    count, window = states.shape[0] // batch, states.shape[1]
    states = states.reshape(batch, count, window, states.shape[-1])
    inner = [states[:, i, 1:window - 1] for i in range(count)]  # each chunk without BOS and end
    return torch.cat([states[:, 0, :1], *inner, states[:, -1, -1:]], dim=1)
