"""benchmarks/gpu_check.py: the script works (on the CPU, with the demo model), and its
figures and checks say what they should."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from core.config.schema import TrainConfig

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load()
CUDA = torch.device("cuda")  # only compared by .type below; nothing is allocated on it


@pytest.mark.slow
def test_the_check_runs_every_preset_on_the_cpu_and_passes(capsys):
    assert gpu_check.main(["--cpu", "--tiny", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("sd15-lora-8gb 256px  fp16->no   AdamW8bit", "sd15-prodigy 256px   bf16       Prodigy",
                "demo 256px           no         AdamW"):
        assert row in out
    assert "3 runs of 2 steps" in out and out.rstrip().endswith("all checks passed")
    assert "FAILED" not in out


def test_card_peaks_are_found_by_the_longest_matching_name():
    assert gpu_check.card_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.card_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.card_peak_tflops("NVIDIA L40S") == 362.0  # not the L4
    assert gpu_check.card_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert gpu_check.card_peak_tflops("Some Future Card") is None


def test_mfu_uses_the_flops_per_image_and_gradient_checkpointing():
    config = TrainConfig()
    config.training.gradient_checkpointing = True
    result = gpu_check.RunResult(gpu_check.RunSpec("sd15-lora-8gb", 512), images_per_s=10.0)
    # 0.80 TFLOP forward x3 (checkpointed) x 10 images/s = 24 TFLOP/s of 790
    assert gpu_check.mfu_text(config, result.spec, result, CUDA, 790.0) == f"{100 * 24 / 790:.1f}%"
    assert gpu_check.mfu_text(config, result.spec, result, CUDA, None) == "unknown card"
    assert gpu_check.mfu_text(config, result.spec, result, torch.device("cpu"), 790.0) == "n/a (CPU)"
    assert math.isclose(gpu_check.forward_tflop_per_image(256), 0.20)


def _result(preset, size, precision, peak):
    return gpu_check.RunResult(gpu_check.RunSpec(preset, size), precision=precision, completed=True,
                               peak_allocated_mb=peak)


def test_a_peak_carried_over_from_the_largest_run_fails_the_check():
    runs = [_result("sd15-lora-8gb", 512, "fp16", 5000), _result("sd15-lora-8gb", 1024, "fp16", 20000),
            _result("sd15-prodigy", 512, "bf16", 5200)]
    assert gpu_check.cross_run_problems(runs, CUDA) == []
    runs[2].peak_allocated_mb = 20000  # what a never-reset max_memory_allocated reports
    [problem] = gpu_check.cross_run_problems(runs, CUDA)
    assert "peaks are not per run" in problem


def test_fp16_and_bf16_must_both_have_run():
    runs = [_result("sd15-lora-8gb", 512, "fp16", 5000), _result("sd15-prodigy", 512, "bf16->fp16", 4000)]
    [problem] = gpu_check.cross_run_problems(runs, CUDA)
    assert problem == "fp16 and bf16 must both run; ran ['fp16']"


def test_seconds_per_step_leave_out_the_first_steps():
    stamps = [0.0, 5.0, 6.0, 7.0, 8.0, 8.5, 9.0, 9.5, 10.0]
    assert gpu_check.seconds_per_step(stamps) == 0.5
    assert gpu_check.seconds_per_step([1.0, 3.0]) == 2.0  # two steps on a CPU: their one interval
