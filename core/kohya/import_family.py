"""Refusing configs for model families LoRA Kiln does not train (FLUX.1, SD3, ...).

Such a config shares most keys with an SD 1.x one, so without this check it would import
"successfully" as an SD 1.x preset and train something else entirely. What says the family:
kohya_ss's checkboxes, sd-scripts' arguments that only its FLUX/SD3 scripts have, the
text-encoder and autoencoder files those families need, and the base model's file name.
kohya_ss writes its FLUX/SD3 fields into every config, so in its JSON only the checkboxes
(and the model's name) count; in an sd-scripts config a FLUX/SD3 argument is there on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PureWindowsPath
from typing import Any

from core.kohya import import_keys as keys

FLUX, SD3 = "FLUX.1", "SD3"

# kohya_ss JSON checkboxes that switch its FLUX/SD3 training on.
_CHECKBOXES = {"flux1_checkbox": FLUX, "sd3_checkbox": SD3}
# sd-scripts arguments only flux_train_network.py / sd3_train_network.py have.
_SCRIPT_ARGUMENTS = {
    "ae": FLUX, "model_prediction_type": FLUX, "discrete_flow_shift": FLUX, "timestep_sampling": FLUX,
    "guidance_scale": FLUX, "apply_t5_attn_mask": FLUX, "split_mode": FLUX, "t5xxl_max_token_length": FLUX,
    "clip_g": SD3, "weighting_scheme": SD3, "logit_mean": SD3, "logit_std": SD3, "mode_scale": SD3,
    "t5xxl": f"{FLUX} or {SD3}", "clip_l": f"{FLUX} or {SD3}",
}
# Base model file names of other families, as their releases name them.
_MODEL_NAMES = (
    (re.compile(r"(?<![a-z])flux"), FLUX),
    (re.compile(r"(?<![a-z0-9])sd3|sd_3(?![0-9])|stable[-_ ]?diffusion[-_ ]?3"), SD3),
    (re.compile(r"hunyuan"), "HunyuanDiT"),
    (re.compile(r"pixart"), "PixArt"),
    (re.compile(r"kolors"), "Kolors"),
    (re.compile(r"auraflow"), "AuraFlow"),
    (re.compile(r"lumina"), "Lumina"),
    (re.compile(r"stable[-_ ]?cascade|stage_c"), "Stable Cascade"),
)
_FAMILIES_WE_TRAIN = "LoRA Kiln trains LoRAs for SD 1.x, SD 2.x and SDXL"


def other_family(args: Mapping[str, Any], from_kohya_ss: bool) -> str | None:
    """'a FLUX.1 config (flux1_checkbox is on)' or None when the config is for a family we train."""
    for key, family in _CHECKBOXES.items():
        if _on(args.get(key)):
            return f"a {family} config ({key} is on)"
    if not from_kohya_ss:
        for key, family in _SCRIPT_ARGUMENTS.items():
            if key in args and not keys.is_off(args[key]):
                return f"a {family} config ({key} is an argument of sd-scripts' {family} scripts only)"
    model = args.get("pretrained_model_name_or_path")
    if isinstance(model, str) and model.strip():
        name = PureWindowsPath(model.strip()).name.lower()  # splits on / and \ alike
        for pattern, family in _MODEL_NAMES:
            if pattern.search(name):
                return f"a {family} config (its base model is {name})"
    return None


def refusal(args: Mapping[str, Any], from_kohya_ss: bool) -> str | None:
    """The whole message for a config of another family; None when it may be imported."""
    found = other_family(args, from_kohya_ss)
    if found is None:
        return None
    return (f"{found}: {_FAMILIES_WE_TRAIN}, so it cannot be imported (as an SD 1.x preset it "
            "would train a different model); start from a LoRA Kiln preset for your SD 1.x, "
            "SD 2.x or SDXL base model instead")


def _on(value: Any) -> bool:
    try:
        return bool(keys.loosen(value, bool))
    except (TypeError, ValueError):
        return False
