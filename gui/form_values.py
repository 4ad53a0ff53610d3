"""Text <-> value for the form's line edits, and the few view hints the schema lacks.

Numbers are shown as the shortest text that reads back exactly (so 1e-4 and 0.00005 are
neither rounded nor padded), and keyword tables as ``name=value`` pairs read with the
same literal rules as the CLI's ``--set``. No Qt here: these are pure functions.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from core.config.schema import DEMO_MODEL
from core.config.overrides import _parse_literal
from core.config.params import FieldError
from core.models.sdxl import DEMO_SDXL_MODEL
from core.training.validation import MODEL_SUFFIXES


@dataclass(frozen=True)
class ViewHint:
    """What the schema does not say but a form needs, for the few fields that need it."""

    placeholder: str = ""
    builtins: tuple[tuple[str, str], ...] = ()  # (menu text, value) offered beside browsing
    file_filter: str = "All files (*)"


_MODEL_FILTER = f"Models ({' '.join('*' + s for s in MODEL_SUFFIXES)});;All files (*)"
VIEW_HINTS: dict[str, ViewHint] = {
    "model.base_model": ViewHint(placeholder="a model file or diffusers folder",
                                 builtins=(("Built-in demo model", DEMO_MODEL),
                                           ("Built-in SDXL demo model", DEMO_SDXL_MODEL)),
                                 file_filter=_MODEL_FILTER),
    "model.vae": ViewHint(placeholder="the model's own VAE", file_filter=_MODEL_FILTER),
    "network.init_weights": ViewHint(placeholder="a new LoRA",
                                     file_filter="LoRA files (*.safetensors);;All files (*)"),
    "optimizer.unet_lr": ViewHint(placeholder="same as learning rate"),
    "optimizer.text_encoder_lr": ViewHint(placeholder="same as learning rate"),
    "optimizer.text_encoder_2_lr": ViewHint(placeholder="same as text-encoder LR"),
    "optimizer.extra_args": ViewHint(placeholder="name=value name=value"),
    "output.output_dir": ViewHint(placeholder="LoRA Kiln's runs folder"),
    # What an empty per-block list means (core.models.blocks), so an empty field reads as a choice.
    "network.down_lr_weight": ViewHint(placeholder="empty: 1 for every block"),
    "network.mid_lr_weight": ViewHint(placeholder="empty: 1"),
    "network.up_lr_weight": ViewHint(placeholder="empty: 1 for every block"),
    "network.block_dims": ViewHint(placeholder="empty: the network dim for every block"),
    "network.block_alphas": ViewHint(placeholder="empty: the network alpha for every block"),
    "network.conv_block_dims": ViewHint(placeholder="empty: the conv dim for every block"),
    "network.conv_block_alphas": ViewHint(placeholder="empty: the conv alpha for every block"),
}


# ---------------------------------------------------------------- text <-> value
def format_float(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` (1e-4 -> 0.0001, 5e-05 -> 5e-5)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), repr(float(value)))


def parse_float(text: str, path: str) -> float:
    try:
        value = float(text.strip().replace("∞", "inf"))
    except ValueError:
        raise FieldError(path, f"'{text.strip()}' is not a number (e.g. 0.0001, 1e-4 or inf)") from None
    if math.isnan(value):
        raise FieldError(path, "nan is not a valid value")
    return value


_PAIR = re.compile(r"""\s*([A-Za-z_][\w.-]*)\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^\s,]+)\s*,?""")


def parse_pairs(text: str, path: str) -> dict[str, Any]:
    """``d_coef=2 decouple=true name="a b"``, each value read as the CLI's --set reads it."""
    out: dict[str, Any] = {}
    text, pos = text.strip(), 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if not match:
            raise FieldError(path, f"expected name=value pairs separated by spaces; cannot read "
                                   f"'{text[pos:].strip()}'")
        out[match.group(1)] = _parse_literal(match.group(2))
        pos = match.end()
    return out


def format_pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={_format_literal(value)}" for key, value in values.items())


def _format_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if re.fullmatch(r"[^\s,=\"']+", text) and _parse_literal(text) == text:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is also a TOML basic string
