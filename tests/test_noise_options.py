"""sd-scripts' noise and loss options: multires noise, adaptive noise scale, input perturbation,
debiased estimation and scale_weight_norms, each against its formula, and a run with all on."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from core.config.schema import NetworkParams, TrainingParams
from core.models.lora import LoraHandles, check_and_prepare, inject_lora
from core.training.loss import debiased_weights, sample_noise
from core.training.max_norm import apply_max_norm, weight_delta
from core.training.noise import input_noise, pyramid_noise
from tests.engine_fixtures import tiny_config
from tests.test_option_effects import _config, _draws, _run, _sd_scripts_scheduler


def _low_frequency_share(noise: torch.Tensor) -> float:
    """The share of the spectrum's energy at the lowest frequencies: up to 1/32 cycles per
    latent pixel on each axis (5 of 64 frequencies per axis)."""
    power = torch.fft.fft2(noise - noise.mean(dim=(2, 3), keepdim=True)).abs() ** 2
    height, width = noise.shape[2:]
    fy = torch.fft.fftfreq(height).abs().reshape(-1, 1)
    fx = torch.fft.fftfreq(width).abs().reshape(1, -1)
    low = ((fy <= 1 / 32) & (fx <= 1 / 32)).expand(height, width)
    return float(power[..., low].sum() / power.sum())


def _pyramid(iterations: int, discount: float, seed: int = 0, shape=(8, 4, 64, 64)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    return pyramid_noise(noise, iterations, discount, generator)


# ---------------------------------------------------------------- multires noise


def test_multires_noise_has_more_low_frequency_energy_than_plain_noise():
    plain = torch.randn((8, 4, 64, 64), generator=torch.Generator().manual_seed(0))
    multires = _pyramid(6, 0.3)
    assert _low_frequency_share(plain) == pytest.approx((5 / 64) ** 2, rel=0.15)  # white noise: flat spectrum
    assert _low_frequency_share(multires) > 1.3 * _low_frequency_share(plain)


def test_a_larger_discount_gives_more_low_frequency_energy():
    shares = [_low_frequency_share(_pyramid(6, discount)) for discount in (0.1, 0.3, 0.6)]
    assert shares[0] < shares[1] < shares[2]


def test_multires_noise_is_rescaled_to_unit_deviation():
    assert float(_pyramid(8, 0.8).std()) == pytest.approx(1.0, abs=1e-5)


def test_multires_levels_stop_at_one_latent_pixel(monkeypatch):
    # 8x8 latents: each level is 2-4 times smaller, so a 1-pixel level comes by the fourth at the latest.
    sizes: list[tuple[int, ...]] = []
    real = torch.randn

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        sizes.append(tuple(args[0]))
        return real(*args, **kwargs)

    generator = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 4, 8, 8), generator=generator)
    monkeypatch.setattr(torch, "randn", counting)
    capped = pyramid_noise(noise, 50, 0.3, generator)
    assert 2 <= len(sizes) <= 4 and min(sizes[-1][2:]) == 1
    assert all(min(size[2:]) > 1 for size in sizes[:-1])
    assert sizes[0] == (1, 4, 8, 8)  # level 0 is full size, weight discount**0 = 1
    monkeypatch.setattr(torch, "randn", real)
    again = torch.Generator().manual_seed(3)
    assert torch.equal(pyramid_noise(torch.randn((1, 4, 8, 8), generator=again), len(sizes), 0.3, again), capped)


# ---------------------------------------------------------------- adaptive noise scale


@pytest.mark.parametrize("scale", [0.5, -2.0])
def test_adaptive_noise_scale_adds_the_channel_mean_to_the_offset(scale):
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1)) + torch.tensor(
        [0.5, -1.5, 0.0, 3.0]).reshape(1, 4, 1, 1)
    got = sample_noise(latents, 0.1, torch.Generator().manual_seed(7), adaptive_noise_scale=scale)

    generator = torch.Generator().manual_seed(7)  # by hand, as sd-scripts' apply_noise_offset
    noise = torch.randn(latents.shape, generator=generator)
    expected = noise.clone()
    draws = torch.randn((2, 4, 1, 1), generator=generator)
    for b in range(2):
        for c in range(4):
            strength = max(0.0, 0.1 + scale * abs(float(latents[b, c].mean())))
            expected[b, c] += strength * float(draws[b, c, 0, 0])
    assert torch.allclose(got, expected, atol=1e-6)
    if scale < 0:  # a negative scale can switch a channel's offset off, never turn it around
        assert torch.equal(got[:, 3], noise[:, 3])


def test_adaptive_noise_scale_without_an_offset_changes_nothing():
    latents = torch.ones((1, 4, 8, 8))
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(sample_noise(latents, 0.0, torch.Generator().manual_seed(2), adaptive_noise_scale=1.0), plain)


# ---------------------------------------------------------------- input perturbation


def test_input_noise_adds_gamma_times_fresh_noise():
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    training = TrainingParams(ip_noise_gamma=0.1)
    got = input_noise(noise, training, torch.Generator().manual_seed(5))
    extra = torch.randn(noise.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, noise + 0.1 * extra)
    assert input_noise(noise, TrainingParams(), torch.Generator()) is noise


def test_random_strength_draws_one_uniform_fraction_of_gamma_first():
    noise = torch.zeros((2, 4, 8, 8))
    training = TrainingParams(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True)
    got = input_noise(noise, training, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    strength = float(torch.rand(1, generator=generator)) * 0.1
    assert torch.allclose(got, strength * torch.randn(noise.shape, generator=generator))


def test_ip_noise_gamma_perturbs_the_unets_input_but_not_the_target(tmp_path):
    plain_config = _config(tmp_path / "plain")
    _, plain_steps, plain_calls = _run(plain_config)
    config = _config(tmp_path / "ip", ip_noise_gamma=0.5)
    _, steps, calls = _run(config)
    plain, perturbed = plain_calls.unet[0], calls.unet[0]
    timesteps = perturbed["timesteps"]
    assert torch.equal(timesteps, plain["timesteps"])

    generator = torch.Generator().manual_seed(config.training.seed)  # noise, timesteps, then the perturbation
    noise = torch.randn(perturbed["noisy"].shape, generator=generator)
    torch.randint(0, 1000, (noise.shape[0],), generator=generator)
    extra = torch.randn(noise.shape, generator=generator)
    sigma = (1 - _sd_scripts_scheduler(False).alphas_cumprod[timesteps]).sqrt().reshape(-1, 1, 1, 1)
    assert torch.allclose(perturbed["noisy"] - plain["noisy"], sigma * 0.5 * extra, atol=1e-5)

    target_is_noise = float(((perturbed["prediction"] - noise) ** 2).mean())
    target_is_input = float(((perturbed["prediction"] - noise - 0.5 * extra) ** 2).mean())
    assert steps[0].loss == pytest.approx(target_is_noise, rel=1e-4)
    assert steps[0].loss != pytest.approx(target_is_input, rel=1e-2)


# ---------------------------------------------------------------- debiased estimation


@pytest.mark.parametrize("v_prediction", [False, True], ids=["epsilon", "v_prediction"])
def test_debiased_weights_are_sd_scripts_formula(v_prediction):
    scheduler = _sd_scripts_scheduler(v_prediction)
    timesteps = torch.tensor([0, 1, 10, 250, 500, 999])
    got = debiased_weights(scheduler.alphas_cumprod, timesteps, v_prediction)
    for t, weight in zip(timesteps.tolist(), got.tolist()):
        alpha_bar = float(scheduler.alphas_cumprod[t])
        snr = min(alpha_bar / (1 - alpha_bar), 1000.0)  # timestep 0's SNR (~1176) is capped
        assert weight == pytest.approx(1 / (snr + 1) if v_prediction else 1 / math.sqrt(snr), rel=1e-5)
    assert got[0] == pytest.approx(1 / 1001 if v_prediction else 1 / math.sqrt(1000), rel=1e-5)


@pytest.mark.parametrize("v_prediction", [False, True], ids=["epsilon", "v_prediction"])
def test_the_step_weighs_each_sample_by_min_snr_then_debiased(tmp_path, v_prediction):
    config = _config(tmp_path, min_snr_gamma=5.0, debiased_estimation_loss=True)
    config.model.v_parameterization = v_prediction
    _, steps, calls = _run(config)
    call = calls.unet[0]
    scheduler = _sd_scripts_scheduler(v_prediction)
    noise, timesteps = _draws(call["noisy"].shape, config.training.seed, 0.0)
    alpha_bar = scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    latents = (call["noisy"] - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    per_sample = ((call["prediction"] - target) ** 2).mean(dim=[1, 2, 3])
    snr = scheduler.alphas_cumprod[timesteps] / (1 - scheduler.alphas_cumprod[timesteps])
    min_snr = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1 if v_prediction else snr)
    debiased = 1 / (snr.clamp(max=1000) + 1) if v_prediction else 1 / snr.clamp(max=1000).sqrt()
    assert steps[0].loss == pytest.approx(float((per_sample * min_snr * debiased).mean()), rel=1e-4)
    assert steps[0].loss != pytest.approx(float((per_sample * min_snr).mean()), rel=1e-2)


# ---------------------------------------------------------------- scale_weight_norms


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 12)
        self.pointwise = nn.Conv2d(8, 6, 1)
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.small = nn.Linear(16, 12)


def _handles(rank: int = 4, alpha: float = 2.0) -> LoraHandles:
    model = _Layers()
    targets = {name: (rank, alpha) for name in ("linear", "pointwise", "conv", "small")}
    inject_lora(model, targets, rank, alpha)
    check_and_prepare(model, targets)
    generator = torch.Generator().manual_seed(0)
    handles = LoraHandles({"unet": model}, {"unet": targets}, NetworkParams())
    with torch.no_grad():
        for path, layer in ((p, model.get_submodule(p)) for p in targets):
            down, up = handles.down_up(layer)
            size = 0.01 if path == "small" else 1.0
            down.copy_(torch.randn(down.shape, generator=generator) * size)
            up.copy_(torch.randn(up.shape, generator=generator) * size)
    return handles


def _delta_norms(handles: LoraHandles) -> dict[str, float]:
    return {path: float((weight_delta(*handles.down_up(layer)) * layer.scaling[handles.adapter]).detach().norm())
            for _, path, layer in handles.layers()}


def test_weight_delta_is_the_layers_weight_change():
    handles = _handles()
    for _, path, layer in handles.layers():
        down, up = handles.down_up(layer)
        base = layer.base_layer
        x = torch.randn((2, 16) if isinstance(base, nn.Linear) else (2, 8, 5, 5))
        with torch.no_grad():
            lora_out = layer(x) - base(x)
            delta = weight_delta(down, up) * layer.scaling[handles.adapter]
            by_weight = (x @ delta.T if isinstance(base, nn.Linear)
                         else nn.functional.conv2d(x, delta, padding=base.padding))
        assert torch.allclose(lora_out, by_weight, atol=1e-4), path


def test_scale_weight_norms_bounds_every_modules_norm_and_counts_the_scaled():
    handles = _handles()
    before = _delta_norms(handles)
    small = handles.down_up(handles.models["unet"].small)
    small_before = [w.detach().clone() for w in small]
    max_norm = 0.5
    over = sorted(path for path, norm in before.items() if norm > max_norm)
    assert over == ["conv", "linear", "pointwise"]

    figures = apply_max_norm(handles, max_norm)

    after = _delta_norms(handles)
    assert all(norm <= max_norm * (1 + 1e-5) for norm in after.values())
    assert all(after[path] == pytest.approx(max_norm, rel=1e-5) for path in over)
    assert all(torch.equal(w, old) for w, old in zip(small, small_before))  # under the max: untouched
    assert figures["keys_scaled"] == 3
    assert figures["max_key_norm"] == pytest.approx(max_norm, rel=1e-5)
    assert figures["average_key_norm"] == pytest.approx(sum(after.values()) / 4, rel=1e-5)


def test_scale_weight_norms_splits_the_factor_evenly_between_up_and_down():
    handles = _handles()
    layer = handles.models["unet"].linear
    down_before, up_before = (w.detach().clone() for w in handles.down_up(layer))
    norm = _delta_norms(handles)["linear"]
    apply_max_norm(handles, 0.5)
    down, up = handles.down_up(layer)
    factor = math.sqrt(0.5 / norm)
    assert torch.allclose(down, down_before * factor) and torch.allclose(up, up_before * factor)


def test_a_norm_between_half_and_the_max_is_left_alone():
    handles = _handles()
    before = _delta_norms(handles)
    figures = apply_max_norm(handles, max(before.values()) * 1.5)
    assert figures["keys_scaled"] == 0 and _delta_norms(handles) == before


# ---------------------------------------------------------------- a run with everything on


def test_a_run_with_every_noise_and_loss_option_completes_and_logs_the_norms(tmp_path):
    config = tiny_config(tmp_path, steps=3)
    training = config.training
    training.noise_offset, training.adaptive_noise_scale = 0.05, 0.01
    training.multires_noise_iterations, training.multires_noise_discount = 6, 0.3
    training.ip_noise_gamma, training.ip_noise_gamma_random_strength = 0.1, True
    training.debiased_estimation_loss, training.min_snr_gamma = True, 5.0
    config.network.scale_weight_norms = 1e-4  # so small that every module is scaled every step
    config.optimizer.learning_rate = 1e-2
    config.logging.tensorboard = True
    result, steps, _ = _run(config)
    assert len(steps) == 3 and all(math.isfinite(s.loss) for s in steps)
    assert all(s.max_norm["keys_scaled"] > 0 for s in steps)
    assert all(s.max_norm["max_key_norm"] == pytest.approx(1e-4, rel=1e-3) for s in steps)

    from pathlib import Path
    run_dir = Path(result.run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()]
    logged = [r["max_norm"] for r in records if r["type"] == "step"]
    assert [r["keys_scaled"] for r in logged] == [s.max_norm["keys_scaled"] for s in steps]
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").iterdir())
    for tag in (b"max_norm/keys_scaled", b"max_norm/average_key_norm", b"max_norm/max_key_norm"):
        assert tag in events


def test_without_scale_weight_norms_no_norms_are_logged(tmp_path):
    _, steps, _ = _run(tiny_config(tmp_path, steps=1))
    assert steps[0].max_norm == {}


def test_noise_offset_random_strength_draws_the_offset_uniformly_in_0_to_noise_offset():
    from core.training.noise import offset_strength

    training = TrainingParams(noise_offset=0.1, noise_offset_random_strength=True)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([offset_strength(training, g) for _ in range(4000)])
    assert draws.min() >= 0.0 and draws.max() < 0.1
    assert draws.mean().item() == pytest.approx(0.05, abs=0.002)
    assert draws.std().item() == pytest.approx(0.1 / math.sqrt(12), abs=0.002)  # uniform, not a fixed value
    g = torch.Generator().manual_seed(0)
    assert offset_strength(training, g) == pytest.approx(float(torch.rand(1, generator=torch.Generator().manual_seed(0))) * 0.1)


def test_without_random_strength_the_offset_is_the_setting_and_nothing_is_drawn():
    from core.training.noise import offset_strength

    g = torch.Generator().manual_seed(0)
    assert offset_strength(TrainingParams(noise_offset=0.1), g) == 0.1
    assert offset_strength(TrainingParams(noise_offset=0.0, noise_offset_random_strength=True), g) == 0.0
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
