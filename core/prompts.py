"""Sample prompts in Kohya's syntax: one per line, options after ' --'.

    a photo of a cat --w 512 --h 768 --s 30 --l 7.5 --d 1 --n blurry, lowres --ss euler_a

Lines starting with # and blank lines are ignored. Unknown or malformed options are
errors that name the line, never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.config import Sampler, SamplingParams


class PromptError(ValueError):
    def __init__(self, line_number: int, message: str) -> None:
        super().__init__(f"sample prompt line {line_number}: {message}")
        self.line_number = line_number


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    seed: int
    sampler: Sampler
    line_number: int


_OPTION = re.compile(r"\s--(\w+)(?:\s+|$)")
_INT_OPTIONS = {"w": "width", "h": "height", "s": "steps", "d": "seed"}


def _int(value: str, name: str, line: int, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise PromptError(line, f"--{name} needs a whole number, got '{value}'") from None
    if not low <= number <= high:
        raise PromptError(line, f"--{name} {number} is outside {low}..{high}")
    return number


def parse_prompt_line(text: str, defaults: SamplingParams, line_number: int = 1) -> SamplePrompt:
    parts = _OPTION.split(" " + text.strip())
    prompt = parts[0].strip()
    values = {"width": defaults.width, "height": defaults.height, "steps": defaults.steps,
              "seed": defaults.seed}
    cfg, negative, sampler = defaults.cfg_scale, "", defaults.sampler
    for name, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        if name in _INT_OPTIONS:
            low, high = {"w": (64, 4096), "h": (64, 4096), "s": (1, 1000), "d": (0, 2**32 - 1)}[name]
            values[_INT_OPTIONS[name]] = _int(value, name, line_number, low, high)
        elif name == "l":
            try:
                cfg = float(value)
            except ValueError:
                raise PromptError(line_number, f"--l needs a number, got '{value}'") from None
        elif name == "n":
            negative = value
        elif name == "ss":
            try:
                sampler = next(s for s in Sampler if s.value == value.lower().replace("-", "_"))
            except StopIteration:
                names = ", ".join(s.value for s in Sampler)
                raise PromptError(line_number, f"--ss {value} is not a known sampler ({names})") from None
        else:
            raise PromptError(line_number, f"unknown option --{name} (use --w --h --s --l --d --n --ss)")
    if not prompt:
        raise PromptError(line_number, "the prompt before the options is empty")
    for key in ("width", "height"):
        if values[key] % 8:
            raise PromptError(line_number, f"--{key[0]} {values[key]} is not a multiple of 8")
    return SamplePrompt(prompt=prompt, negative=negative, cfg_scale=cfg, sampler=sampler,
                        line_number=line_number, **values)


def parse_prompts(text: str, defaults: SamplingParams) -> list[SamplePrompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, defaults, number))
    return prompts
