"""Several processes train one LoRA: DDP averages the gradients of every trained model."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config.presets import save_preset
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def _train(tmp_path: Path, name: str, processes: int, accumulation: int, steps: int = 6,
           clip_skip: int = 1) -> dict[int, dict]:
    config = tiny_config(tmp_path / name, steps=steps)  # 10 batches of 1 an epoch: 5 steps, then 1 more
    config.training.batch_size = 1
    config.training.gradient_accumulation_steps = accumulation
    config.model.clip_skip = clip_skip
    assert config.network.train_unet and config.network.train_text_encoder
    preset, out = tmp_path / f"{name}.toml", tmp_path / f"{name}-weights"
    save_preset(config, preset)
    out.mkdir()
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "-m", "tests.ddp_worker", str(preset), str(out)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return {rank: torch.load(out / f"rank{rank}.pt") for rank in range(processes)}


def test_two_processes_train_the_same_lora_as_one_process_with_the_same_global_batch(tmp_path):
    """Two processes with a batch of 1 each against one process accumulating 2 batches of 1.

    Process r trains batches r, r+2, r+4... (setup.shard), so a step of the pair trains
    batches 2k and 2k+1, the same two that one process accumulates in its window k; averaged
    gradients (DDP) and a window's mean (each micro-batch's loss divided by 2) are the same
    sum. Noise and timesteps come from the sample itself (tests/ddp_worker.py): each process
    draws from its own generator, so random draws would differ from one process's draws.
    The weights then match within float rounding: the two sums round differently.
    """
    pair = _train(tmp_path, "two", processes=2, accumulation=1)
    [alone] = _train(tmp_path, "one", processes=1, accumulation=2).values()
    assert set(pair[0]) == set(pair[1]) == set(alone) == {"unet", "text_encoder"}
    for model in alone:
        assert pair[0][model].keys() == alone[model].keys()
        for key, weight in alone[model].items():
            assert torch.equal(pair[0][model][key], pair[1][model][key]), f"{model} {key} differs between ranks"
            assert torch.allclose(pair[0][model][key], weight, rtol=1e-4, atol=1e-6), f"{model} {key}"
    moved = [key for key, weight in alone["unet"].items() if "lora_B" in key or "lora_up" in key]
    assert moved and any(alone["unet"][key].abs().max() > 0 for key in moved)  # training changed them


@pytest.mark.slow
def test_two_processes_train_the_text_encoder_with_clip_skip(tmp_path):
    """With CLIP skip 2 the text encoder's last layer runs but its LoRA weights get no
    gradient; DDP must be told to look for such weights, or the second step stops with
    "Expected to have finished reduction in the prior iteration"."""
    pair = _train(tmp_path, "two", processes=2, accumulation=1, steps=3, clip_skip=2)
    for model, weights in pair[0].items():
        for key, weight in weights.items():
            assert torch.equal(weight, pair[1][model][key]), f"{model} {key} differs between ranks"
