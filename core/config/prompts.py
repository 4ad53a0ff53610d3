"""Sample prompts in Kohya's syntax: one per line, options after ' --'.

    a photo of a cat --w 512 --h 768 --s 30 --l 7.5 --d 1 --n blurry, lowres --ss euler_a

Lines starting with # and blank lines are ignored. Unknown or malformed options are
errors that name the line, never silently ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from core.config.schema import Sampler, SamplingParams
from core.config.params import range_problem, spec_for


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
# Option -> the SamplingParams field it overrides for one prompt; the field's range applies.
_NUMBER_OPTIONS = {"w": "width", "h": "height", "s": "steps", "d": "seed", "l": "cfg_scale"}


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def _number(value: str, name: str, line: int) -> int | float:
    field = _NUMBER_OPTIONS[name]
    spec = spec_for(SamplingParams, field)
    whole = spec is not None and spec.type is int
    try:
        number: int | float = int(value) if whole else float(value)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise PromptError(line, f"--{name} needs {kind}, got '{_shown(value)}'") from None
    if not math.isfinite(number):
        raise PromptError(line, f"--{name} needs a finite number, got '{_shown(value)}'")
    problem = range_problem(number, spec.info) if spec is not None else None
    if problem:
        raise PromptError(line, f"--{name} ({field}): {problem}")
    return number


def parse_prompt_line(text: str, defaults: SamplingParams, line_number: int = 1) -> SamplePrompt:
    parts = _OPTION.split(" " + text.strip())
    prompt = parts[0].strip()
    values: dict[str, int | float] = {field: getattr(defaults, field) for field in _NUMBER_OPTIONS.values()}
    negative, sampler = "", defaults.sampler
    for name, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        if name in _NUMBER_OPTIONS:
            values[_NUMBER_OPTIONS[name]] = _number(value, name, line_number)
        elif name == "n":
            negative = value
        elif name == "ss":
            try:
                sampler = next(s for s in Sampler if s.value == value.lower().replace("-", "_"))
            except StopIteration:
                names = ", ".join(s.value for s in Sampler)
                raise PromptError(line_number, f"--ss {_shown(value)} is not a known sampler ({names})") from None
        else:
            raise PromptError(line_number, f"unknown option --{_shown(name)} (use --w --h --s --l --d --n --ss)")
    if not prompt:
        raise PromptError(line_number, "the prompt before the options is empty")
    for key in ("width", "height"):
        if values[key] % 8:
            raise PromptError(line_number, f"--{key[0]} {values[key]} is not a multiple of 8")
    return SamplePrompt(prompt=prompt, negative=negative, sampler=sampler, line_number=line_number,
                        width=int(values["width"]), height=int(values["height"]), steps=int(values["steps"]),
                        seed=int(values["seed"]), cfg_scale=float(values["cfg_scale"]))


def parse_prompts(text: str, defaults: SamplingParams) -> list[SamplePrompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            prompts.append(parse_prompt_line(line, defaults, number))
    return prompts
