"""Saving the sample images drawn during training (the family draws them: Family.generate)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from core.config.prompts import SamplePrompt
from core.system.atomic import write_bytes_atomic


def save_sample(image, folder: Path, name: str, prompt: SamplePrompt, step: int, epoch: int) -> Path:  # noqa: ANN001
    """PNG with the prompt and settings in its text chunks (as A1111-style tools read them)."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    settings = {"prompt": prompt.prompt, "negative_prompt": prompt.negative, "width": prompt.width,
                "height": prompt.height, "steps": prompt.steps, "cfg_scale": prompt.cfg_scale,
                "seed": prompt.seed, "sampler": prompt.sampler.value, "step": step, "epoch": epoch}
    info.add_text("lorakiln", json.dumps(settings))
    info.add_text("parameters", f"{prompt.prompt}\nNegative prompt: {prompt.negative}\nSteps: {prompt.steps}, "
                                f"Sampler: {prompt.sampler.value}, CFG scale: {prompt.cfg_scale}, Seed: {prompt.seed}, "
                                f"Size: {prompt.width}x{prompt.height}")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    path = folder / name
    write_bytes_atomic(path, buffer.getvalue())
    return path
