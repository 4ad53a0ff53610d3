"""Where the shipped SDXL base 1.0 configs and its two tokenizers live, and how to load them.

resources/sdxl/ is a diffusers-layout folder without weights (model_index.json, the unet,
vae, text_encoder (CLIP ViT-L), text_encoder_2 (OpenCLIP ViT-bigG with projection) and
scheduler configs). Pass it as ``config=`` to ``from_single_file`` so that diffusers never asks
a model hub.

Both tokenizers use CLIP's BPE vocabulary, which resources/sd15/tokenizer already ships:
resources/sdxl/tokenizer and tokenizer_2 hold only their tokenizer_config.json and
special_tokens_map.json and borrow the vocabulary from there (1.5 MB not shipped twice).
tokenizer_2 pads with "!" (id 0) instead of the end token, as SDXL's OpenCLIP encoder did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from core.models.sd15_files import CLIP_MAX_LENGTH, load_tokenizer, tokenizer_dir
from core.system.resources import resource_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import CLIPTokenizer

TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


def sdxl_config_dir() -> Path:
    """The shipped SDXL base config folder (model_index.json and one folder per component)."""
    return resource_path("sdxl")


def load_clip_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """The CLIP tokenizer of ``folder``, offline: its own vocabulary when it has one (a
    downloaded diffusers folder), else the shipped vocabulary with ``folder``'s pad token."""
    from core.models.libraries import imported

    CLIPTokenizer = imported("transformers", "CLIPTokenizer")  # the scan's thread may meet a run's

    path = Path(folder)
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return load_tokenizer(path)
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = {}
    pad = settings.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    # Through from_pretrained, as load_tokenizer explains; pad_token overrides the folder's.
    options = {"pad_token": str(pad)} if pad else {}
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True, **options)
    tokenizer.model_max_length = CLIP_MAX_LENGTH
    return tokenizer


def load_tokenizers(folder: str | Path | None = None) -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """(tokenizer, tokenizer_2) of a diffusers SDXL folder, or the shipped ones when
    ``folder`` is None or lacks them."""
    root = Path(folder) if folder is not None else sdxl_config_dir()
    found = []
    for name in TOKENIZER_FOLDERS:
        own = root / name
        found.append(load_clip_tokenizer(own if own.is_dir() else sdxl_config_dir() / name))
    return found[0], found[1]
