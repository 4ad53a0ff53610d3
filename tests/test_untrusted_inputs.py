"""Issue 12, the smaller items: files named on a command line are read only when they are
regular files of a sane size, and a runaway caption is not tokenised whole every step."""

import argparse
import os

import pytest

from core.cli.grid import GridError, _prompts
from core.config.schema import SamplingParams
from core.models.clip_text import CHARACTERS_PER_TOKEN, tokenize


def grid_args(prompts_file):
    return argparse.Namespace(prompts_file=str(prompts_file), prompt=[])


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_grid_prompts_file_that_is_a_device_is_refused_not_read():
    with pytest.raises(GridError, match="/dev/zero: cannot read the prompts file.*device"):
        _prompts(grid_args("/dev/zero"), SamplingParams())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_grid_prompts_file_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    import signal

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    signal.alarm(30)  # a regression hangs on open(): fail instead of hanging the suite
    try:
        with pytest.raises(GridError, match="prompts.txt"):
            _prompts(grid_args(fifo), SamplingParams())
    finally:
        signal.alarm(0)


def test_a_grid_prompts_file_is_still_read(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeffa kiln --w 64 --h 64\n# note\nblue pot\n", encoding="utf-8")
    assert [p.prompt for p in _prompts(grid_args(path), SamplingParams())] == ["a kiln", "blue pot"]


class RecordingTokenizer:
    model_max_length = 77

    def __init__(self):
        self.seen = []

    def __call__(self, captions, **kwargs):
        import torch

        self.seen.append(captions)
        return type("Out", (), {"input_ids": torch.zeros(len(captions), 77, dtype=torch.long)})()


def test_a_runaway_caption_is_cut_before_tokenising():
    tokenizer = RecordingTokenizer()
    tokenize(tokenizer, ["tag, " * 200_000, "short"])
    (seen,) = tokenizer.seen
    assert len(seen[0]) == 77 * CHARACTERS_PER_TOKEN and seen[1] == "short"


def test_cutting_keeps_every_token_that_trains():
    from core.models.sd15_files import load_tokenizer

    tokenizer = load_tokenizer()  # the real SD 1.x tokenizer the app ships
    caption = ", ".join(f"tag{i}" for i in range(30_000))
    full = tokenizer([caption], padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids
    assert tokenize(tokenizer, [caption]).tolist() == full.tolist()
