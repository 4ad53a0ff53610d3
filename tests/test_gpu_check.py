"""benchmarks/gpu_check.py: the script works (on the CPU, with the demo model), and its
figures and checks say what they should."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from core.config.schema import TrainConfig
from core.training.vram_forecast import CUDA_CONTEXT_BYTES, VramForecast, driver_bytes

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
    for row in ("sd15-lora-8gb 256px  fp16->no   AdamW8bit  1", "sd15-prodigy 256px   bf16       Prodigy    1",
                "sdxl-lora-8gb 256px  bf16       AdamW8bit  1", "demo 256px           no         AdamW      1"):
        assert row in out
    # The forecast table: each run's bucket, batch and forecast tensors, nothing measured on a CPU.
    assert "forecast tensors MiB  own peak alloc MiB  error  /aim  forecast driver MiB" in out
    for run in ("sd15-lora-8gb 256px", "sdxl-lora-8gb 256px", "demo 256px"):
        assert re.search(rf"^{run} +256x256 +1 +[1-9][0-9]* +- +- +- +[1-9][0-9]* +- +- +-$", out, re.M), run
    assert "forecast within 10% of the peak allocated: informational on the CPU" in out
    assert "4 runs of 2 steps" in out and out.rstrip().endswith("all checks passed")
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
    assert gpu_check.forward_tflop_per_image(1024, "sdxl") == 6.76
    assert math.isclose(gpu_check.forward_tflop_per_image(2048, "sdxl"), 4 * 6.76)


def test_sdxl_runs_at_1024_batch_1_between_the_sd15_runs_and_the_demo():
    specs = gpu_check.run_specs(on_gpu=True)
    assert [(s.preset, s.resolution, s.batch) for s in specs] == [
        ("sd15-lora-8gb", 512, None), ("sd15-lora-8gb", 768, None), ("sd15-lora-8gb", 1024, None),
        ("sd15-prodigy", 512, None), ("sdxl-lora-8gb", 1024, 1), ("demo", 256, None)]
    assert specs[4].model == gpu_check.SDXL and not specs[5].uses_built_model
    assert {s.resolution for s in gpu_check.run_specs(on_gpu=False)} == {256}


def test_random_sdxl_is_written_as_a_diffusers_folder_the_sdxl_family_loads(tmp_path):
    from safetensors.torch import load_file

    from core.models.demo_sdxl import write_demo_sdxl_config_dir
    from core.models.sdxl import SDXLFamily

    configs = write_demo_sdxl_config_dir(tmp_path / "configs")  # SDXL's layout at the demo's size
    folder = gpu_check.build_random_sdxl(tmp_path / "sdxl-random", torch.device("cpu"), configs)

    assert torch.get_default_dtype() is torch.float32  # put back after the bf16 build
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        [weights] = (folder / name).glob("*.safetensors")
        assert {t.dtype for t in load_file(weights).values()} == {torch.float16}
    for name in ("tokenizer", "tokenizer_2"):  # as a downloaded SDXL folder: its own vocabulary
        assert (folder / name / "vocab.json").is_file() and (folder / name / "merges.txt").is_file()
    components = SDXLFamily().load(str(folder))
    assert components.family == "sdxl" and set(components.text_encoders) == {"text_encoder", "text_encoder_2"}
    assert components.tokenizers["text_encoder_2"].pad_token == "!"  # OpenCLIP's padding kept
    weights = [p for m in (components.unet, *components.text_encoders.values()) for p in m.parameters()]
    assert all(torch.isfinite(p).all() for p in weights) and any(p.abs().max() > 0 for p in weights)


def _forecast(tensors_mib):
    peak = int(tensors_mib * 2**20)
    return VramForecast(frozen_weights=0, trained_weights=0, optimizer_state=0, gradients=0, activations=peak,
                        resident_modules=0, training_peak=peak, caching_peak=0, sampling_peak=None, peak=peak,
                        driver=driver_bytes(peak), bucket=(1024, 1024), batch_size=1, attention="sdpa", notes=())


def _measured(forecast_mib, allocated, reserved, start=0.0):
    return gpu_check.RunResult(gpu_check.RunSpec("sdxl-lora-8gb", 1024, gpu_check.SDXL, batch=1), completed=True,
                               peak_allocated_mb=allocated, peak_reserved_mb=reserved, start_allocated_mb=start,
                               forecast=_forecast(forecast_mib))


def test_the_forecast_error_is_against_the_runs_own_peak_allocated_and_reserved():
    run = _measured(5500, allocated=6000 + 500, reserved=7000 + 500, start=500)  # 500 left by earlier runs
    error, reserved_error = run.forecast_errors()
    assert math.isclose(error, 5500 / 6000 - 1)
    # the driver figure less the CUDA context: the tensors plus the allocator's slack
    assert math.isclose(reserved_error, (driver_bytes(5500 * 2**20) - CUDA_CONTEXT_BYTES) / 2**20 / 7000 - 1)
    assert gpu_check.forecast_problems(run) == []  # 8.3% off: within the aim
    assert gpu_check.forecast_check_line([run], CUDA).endswith("ok (worst 8.3% in sdxl-lora-8gb 1024px, "
                                                                "0.83 of the aim)")


def test_a_forecast_more_than_10_percent_off_fails_on_cuda_and_informs_on_the_cpu():
    run = _measured(5000, allocated=6000, reserved=7000)
    [problem] = gpu_check.forecast_problems(run)
    assert "is -16.7% off the measured peak allocated (6000 MiB); the aim is within 10%" in problem
    assert ": FAILED (worst 16.7% in sdxl-lora-8gb 1024px, 1.67 of the aim)" in \
        gpu_check.forecast_check_line([run], CUDA)
    cpu_run = _measured(5000, allocated=float("nan"), reserved=float("nan"))
    assert gpu_check.forecast_problems(cpu_run) == []
    assert "informational on the CPU" in gpu_check.forecast_check_line([cpu_run], torch.device("cpu"))


def test_a_run_without_a_forecast_fails_the_check_on_cuda_only():
    run = _measured(5000, allocated=5100, reserved=6000)
    run.forecast, run.forecast_failure = None, "RuntimeError: Tensor.item() cannot be called on meta tensors"
    assert gpu_check.forecast_problems(run) == [f"no VRAM forecast: {run.forecast_failure}"]
    assert "FAILED (1 run(s) without a forecast" in gpu_check.forecast_check_line([run], CUDA)
    line = gpu_check.forecast_check_line([run], torch.device("cpu"))
    assert "informational" in line and "no forecast for sdxl-lora-8gb 1024px (RuntimeError" in line


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


def test_a_run_on_cuda_must_have_recorded_the_forecast_the_check_made(tmp_path):
    import json

    forecast = _forecast(100)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"vram_forecast": {"peak": forecast.peak, "bucket": [1024, 1024]}}))
    assert gpu_check.recorded_forecast_problems(tmp_path, forecast) == []
    summary.write_text(json.dumps({"vram_forecast": {"peak": 16, "bucket": [1024, 1024]}}))
    assert "recorded a forecast of 16 bytes" in gpu_check.recorded_forecast_problems(tmp_path, forecast)[0]
    summary.write_text(json.dumps({"vram_forecast": {"error": "boom"}}))
    assert "recorded no VRAM forecast" in gpu_check.recorded_forecast_problems(tmp_path, forecast)[0]
    summary.unlink()
    assert "cannot read" in gpu_check.recorded_forecast_problems(tmp_path, forecast)[0]
