"""The VRAM forecast (core.training.vram_forecast): the engine's step run on the meta device
under a tracker of live tensor storages. Figures are printed (pytest -s) for the record."""

from __future__ import annotations

import math

import pytest
import torch

from core.config.presets import find_preset, load_preset
from core.config.schema import DEMO_MODEL, Attention, LatentCache, MixedPrecision, OptimizerType, SubsetParams, TrainConfig
from core.models.sdxl import DEMO_SDXL_MODEL
from core.training.tensor_tracker import BLOCK, StorageTracker
from core.training.vram_forecast import CUDA_CONTEXT_BYTES, driver_bytes, forecast_vram

GIB = 2**30


def rounded(n: int) -> int:
    return math.ceil(n / BLOCK) * BLOCK


def sd15(**training) -> TrainConfig:
    """Full-size SD 1.5 (no weights needed: the forecast builds it from the shipped configs),
    U-Net LoRA dim 32, fp16, latents cached, as the reference doc's figures."""
    config = TrainConfig()
    config.model.base_model = "model.safetensors"  # never read: the family's configs are used
    config.network.train_text_encoder = False
    config.network.dim, config.network.alpha = 32, 16.0
    config.optimizer.type = OptimizerType.ADAMW
    config.dataset.latent_cache = LatentCache.MEMORY
    config.training.mixed_precision = MixedPrecision.FP16
    config.training.batch_size = 2
    for name, value in training.items():
        setattr(config.training, name, value)
    return config


def show(label: str, forecast) -> None:  # noqa: ANN001
    print(f"\n{label}\n" + "\n".join(forecast.lines()))


# ---------------------------------------------------------------------------- the tracker, by hand
def test_tracker_counts_a_hand_counted_step_exactly():
    weight = torch.empty((256, 1024), device="meta")  # 1 MiB, made before tracking
    with StorageTracker() as tracker:
        tracker.adopt([weight], "frozen_weights")
        x = torch.empty((4, 1024), device="meta")  # 16 KiB
        y = x @ weight.t()  # (4, 256) fp32: 4 KiB; the transpose is a view and adds nothing
        small = torch.empty(10, device="meta")  # 40 bytes, one 512-byte block
        assert tracker.current == 2**20 + 16 * 2**10 + 4 * 2**10 + BLOCK
        del x, small
        z = y.half()  # 2 KiB
        assert tracker.current == 2**20 + 4 * 2**10 + 2 * 2**10
        host = torch.ones(1000)  # on the CPU: no VRAM
        del host
    assert tracker.peak == 2**20 + 16 * 2**10 + 4 * 2**10 + BLOCK
    assert tracker.at_peak() == {"frozen_weights": 2**20, "activations": 16 * 2**10 + 4 * 2**10 + BLOCK}
    assert tracker.live() == {"frozen_weights": 2**20, "activations": 6 * 2**10}
    del y, z


def test_released_tensors_stop_counting_and_labels_apply_at_the_peak():
    a = torch.empty(1024, device="meta")
    with StorageTracker() as tracker:
        tracker.adopt([a], "resident_modules")
        b = torch.empty(2048, device="meta")
        tracker.release([a])
        tracker.label([b], "gradients")  # known as a gradient only later
        assert tracker.current == 8192
    assert tracker.at_peak() == {"resident_modules": 4096, "gradients": 8192}
    del b


# ---------------------------------------------------------------------------- the demo models
def test_demo_forecast_counts_the_weights_it_builds():
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.optimizer.type = OptimizerType.ADAMW
    config.training.mixed_precision = MixedPrecision.FP16
    forecast = forecast_vram(config)
    show("demo", forecast)

    from core.models.sd1 import FAMILY
    from core.models.lora import attach_lora

    components = FAMILY.build_demo(0)
    handles = attach_lora(components, FAMILY, config.network)
    lora = handles.params(tuple(handles.targets))
    lora_ids = {id(p) for p in lora}
    frozen = [t for module in components.denoisers().values() for t in [*module.parameters(), *module.buffers()]
              if id(t) not in lora_ids]
    # fp16 frozen weights (U-Net and the trained text encoder), fp32 LoRA, AdamW's two fp32 moments
    assert forecast.frozen_weights == sum(rounded(t.numel() * (2 if t.is_floating_point() else t.element_size()))
                                          for t in frozen)
    assert forecast.trained_weights == sum(rounded(p.numel() * 4) for p in lora)
    assert forecast.optimizer_state == 2 * forecast.trained_weights
    assert forecast.activations > 0
    assert forecast.training_peak == (forecast.frozen_weights + forecast.trained_weights + forecast.optimizer_state
                                      + forecast.gradients + forecast.activations + forecast.resident_modules)
    assert forecast.driver == driver_bytes(forecast.peak) > forecast.peak + CUDA_CONTEXT_BYTES
    assert forecast.to_json()["peak"] == forecast.peak


def test_sdxl_demo_forecast_runs():
    config = TrainConfig()
    config.model.base_model = DEMO_SDXL_MODEL
    forecast = forecast_vram(config)
    show("SDXL demo", forecast)
    assert forecast.trained_weights > 0 and forecast.activations > 0


# ---------------------------------------------------------------------------- full-size SD 1.5
@pytest.fixture(scope="module")
def baseline():
    return forecast_vram(sd15(gradient_checkpointing=True))


def test_checkpointing_lowers_the_activations(baseline):
    without = forecast_vram(sd15(gradient_checkpointing=False))
    show("SD 1.5 512 batch 2, no checkpointing", without)
    assert baseline.activations < 0.5 * without.activations
    assert baseline.frozen_weights == without.frozen_weights


def test_halving_the_batch_roughly_halves_the_activations(baseline):
    half = forecast_vram(sd15(gradient_checkpointing=True, batch_size=1))
    assert 0.4 < half.activations / baseline.activations < 0.65


def test_adamw8bit_keeps_about_a_quarter_of_adamws_state(baseline):
    config = sd15(gradient_checkpointing=True)
    config.optimizer.type = OptimizerType.ADAMW8BIT
    eight_bit = forecast_vram(config)
    # uint8 moments plus an fp32 absmax per 256 values (layers under 4096 values stay fp32)
    assert 3.5 < baseline.optimizer_state / eight_bit.optimizer_state < 4.1
    assert eight_bit.trained_weights == baseline.trained_weights


def test_cached_text_outputs_take_the_encoder_off_the_gpu(baseline):
    config = sd15(gradient_checkpointing=True)
    shuffled = [SubsetParams(image_dir="x", shuffle_caption=True)]  # captions change: nothing to cache
    live = forecast_vram(config, subsets=shuffled)
    assert baseline.resident_modules == 0
    # CLIP ViT-L in fp16: 123 M parameters
    assert 0.24e9 < live.resident_modules < 0.25e9


def test_eager_attention_stores_the_attention_matrices(baseline):
    config = sd15(gradient_checkpointing=True)
    config.training.attention = Attention.EAGER
    eager = forecast_vram(config)
    # 8 heads x 4096^2 scores at the first level, per image: far more than the fused kernel keeps
    assert eager.activations > baseline.activations + 2 * 8 * 4096**2 * 2


def test_sd15_at_512_batch_3_is_near_the_reference_figure():
    """sdxl-and-memory.md §4: 2.9 GiB with checkpointing (U-Net alone, fp16, LoRA dim 32, AdamW,
    flash-like attention). The forecast's training step is the same thing run through the engine:
    the noise, targets and loss in fp32 and the cached text states add a little."""
    forecast = forecast_vram(sd15(gradient_checkpointing=True, batch_size=3))
    show("SD 1.5 512 batch 3, checkpointing, fp16", forecast)
    print(f"training step {forecast.training_peak / GIB:.2f} GiB (reference 2.9 GiB)")
    assert 2.4 * GIB < forecast.training_peak < 3.4 * GIB


@pytest.mark.slow
def test_sdxl_8gb_preset_trains_under_8_gb():
    config = load_preset(find_preset("sdxl-lora-8gb")).config
    config.model.base_model = "sdxl.safetensors"
    forecast = forecast_vram(config, bucket=(1024, 1024))
    show("SDXL 1024 batch 1, sdxl-lora-8gb", forecast)
    step_driver = driver_bytes(forecast.training_peak)
    print(f"training step as the driver shows it: {step_driver / 1e9:.2f} GB")
    # 2.57 B U-Net parameters in bf16
    assert 5.0e9 < forecast.frozen_weights < 5.3e9
    # Every phase fits, caching included: the U-Net reaches the GPU after the VAE and the
    # text encoders have left it (11.3 GB when they all met there).
    assert forecast.driver < 8e9 and forecast.caching_peak < forecast.training_peak
    assert forecast.resident_modules == 0


@pytest.mark.slow
def test_fp8_base_weights_halve_the_frozen_weights_of_sdxl():
    config = load_preset(find_preset("sdxl-lora-8gb")).config
    config.model.base_model = "sdxl.safetensors"
    plain = forecast_vram(config, bucket=(1024, 1024))
    config.model.fp8_base = True
    fp8 = forecast_vram(config, bucket=(1024, 1024))
    show("SDXL 1024 batch 1, sdxl-lora-8gb + fp8_base", fp8)
    print(f"frozen weights {plain.frozen_weights / 1e9:.2f} GB -> {fp8.frozen_weights / 1e9:.2f} GB; "
          f"driver {plain.driver / 1e9:.2f} GB -> {fp8.driver / 1e9:.2f} GB (training step alone "
          f"{driver_bytes(fp8.training_peak) / 1e9:.2f} GB; aim 4.5 GB)")
    # the U-Net's Linear and Conv2d weights at 1 byte; its norms and biases (0.1 %) stay in bf16
    assert 0.5 < fp8.frozen_weights / plain.frozen_weights < 0.51
    assert fp8.trained_weights == plain.trained_weights and fp8.optimizer_state == plain.optimizer_state
    assert fp8.training_peak < plain.training_peak - 2.4e9


# ---------------------------------------------------------------------------- fp8 base weights
def test_an_fp8_layer_holds_its_upcast_weight_only_while_it_runs():
    """Its input needs a gradient (a LoRA below it), yet backward keeps the fp8 weight, not the
    bf16 copy that autocast's cast would leave saved for it."""
    from core.models.fp8 import store_in_fp8

    layer = torch.nn.Linear(1024, 256, bias=False, device="meta").requires_grad_(False)
    store_in_fp8(layer, torch.bfloat16)
    with StorageTracker() as tracker:
        tracker.adopt([layer.weight], "frozen_weights")  # 256 KiB at 1 byte an element
        x = torch.empty((4, 1024), device="meta", requires_grad=True)  # 16 KiB
        y = layer(x)
        # during the call: x and the weight cast to bf16 (8 + 512 KiB) and the bf16 output (2 KiB)
        assert tracker.peak == 256 * 2**10 + 16 * 2**10 + 8 * 2**10 + 512 * 2**10 + 2 * 2**10
        assert tracker.current == 256 * 2**10 + 16 * 2**10 + 2 * 2**10  # the casts are gone
        y.backward(torch.empty_like(y))
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    del x, y


def test_fp8_counts_the_frozen_linear_and_conv_weights_at_one_byte():
    from core.models.sd1 import FAMILY
    from core.training import setup

    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.model.fp8_base = True
    config.optimizer.type = OptimizerType.ADAMW
    config.training.mixed_precision = MixedPrecision.FP16
    forecast = forecast_vram(config)
    show("demo, fp8 base weights", forecast)
    # the same model prepared on the CPU holds the dtypes a GPU gets: fp8 layers, fp16 the rest
    network = setup.prepare_network(config, FAMILY, FAMILY.build_demo(0), torch.device("cpu"), torch.float16,
                                    torch.float16)
    lora = {id(p) for p in network.handles.params(tuple(network.handles.targets))}
    frozen = [t for module in network.components.denoisers().values() for t in [*module.parameters(),
                                                                                 *module.buffers()]
              if id(t) not in lora]
    assert torch.float8_e4m3fn in {t.dtype for t in frozen}
    assert forecast.frozen_weights == sum(rounded(t.numel() * t.element_size()) for t in frozen)
    config.model.fp8_base = False
    assert forecast.frozen_weights < forecast_vram(config).frozen_weights
    assert any("fp8 base weights (unet, text_encoder)" in note for note in forecast.notes)


# ---------------------------------------------------------------------------- where people see it
@pytest.mark.slow
def test_plan_json_carries_the_forecast_and_plan_and_check_print_it(capsys):
    import json

    from core.cli.main import main
    from core.system.resources import resource_path

    dataset = str(resource_path("demo") / "dataset")
    assert main(["plan", dataset, "--preset", "demo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    vram = doc["vram"]
    largest = max((tuple(b["resolution"]) for b in doc["buckets"]), key=lambda b: b[0] * b[1])
    assert vram["bucket"] == list(largest)
    assert vram["driver"] > vram["peak"] >= vram["training_peak"] > 0
    assert {"frozen_weights", "trained_weights", "optimizer_state", "gradients", "activations",
            "resident_modules", "caching_peak"} <= set(vram)
    assert main(["plan", dataset, "--preset", "demo"]) == 0
    assert "VRAM forecast" in capsys.readouterr().out
    assert main(["check", "demo", "--no-paths"]) == 0
    assert "as the driver will show it" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer, copies", [("Prodigy", 4), ("DAdaptAdam", 3)])
def test_prodigy_and_dadapt_are_forecast_with_their_state(optimizer, copies):
    """Their step reads values (p.any(), .item()), which the meta device cannot give: their
    first step's state is learnt on CPU copies and counted: Prodigy's s, p0, exp_avg and
    exp_avg_sq (slice_p 1), DAdaptAdam's s, exp_avg and exp_avg_sq, each the size of the weight."""
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.optimizer.type, config.optimizer.learning_rate = OptimizerType(optimizer), 1.0
    forecast = forecast_vram(config)
    assert forecast.optimizer_state == pytest.approx(copies * forecast.trained_weights, rel=0.02)


@pytest.mark.parametrize("option, value", [
    ("noise_offset", 0.05), ("adaptive_noise_scale", 0.01), ("multires_noise_iterations", 6),
    ("ip_noise_gamma", 0.1), ("ip_noise_gamma_random_strength", True), ("debiased_estimation_loss", True),
    ("scale_weight_norms", 1.0)])
def test_the_forecast_runs_with_each_noise_and_loss_option(option, value):
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.optimizer.type = OptimizerType.ADAMW
    config.training.noise_offset = 0.05  # adaptive_noise_scale needs one
    config.training.ip_noise_gamma = 0.1  # the random strength needs one
    setattr(config.network if option == "scale_weight_norms" else config.training, option, value)
    forecast = forecast_vram(config)
    assert forecast.activations > 0 and forecast.peak > 0
