"""Where the shipped Stable Diffusion 1.5 configs and CLIP tokenizer live, and how to load them.

resources/sd15/ is a diffusers-layout folder without weights (model_index.json, the unet,
vae, text_encoder and scheduler configs, and the tokenizer built by tools/build_tokenizer.py).
Pass it as ``config=`` to ``from_single_file`` so that diffusers never asks a model hub.

transformers is imported inside the functions: core modules must stay cheap to import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.system.resources import resource_path

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import CLIPTokenizer

CLIP_MAX_LENGTH = 77
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407


def sd15_config_dir() -> Path:
    """The shipped SD 1.5 config folder (model_index.json and one folder per component)."""
    return resource_path("sd15")


def tokenizer_dir() -> Path:
    return sd15_config_dir() / "tokenizer"


def load_tokenizer(folder: str | Path | None = None) -> "CLIPTokenizer":
    """Load a CLIP tokenizer from ``folder`` (default: the shipped one), offline.

    Always goes through ``from_pretrained``: in transformers 5 the ``CLIPTokenizer``
    constructor ignores ``vocab_file``/``merges_file`` and would hand back wrong ids.
    """
    from core.models.libraries import imported

    CLIPTokenizer = imported("transformers", "CLIPTokenizer")  # the scan's thread may meet a run's

    path = Path(folder) if folder is not None else tokenizer_dir()
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer (vocab.json, merges.txt) in {path}")
    tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
    tokenizer.model_max_length = CLIP_MAX_LENGTH
    return tokenizer
