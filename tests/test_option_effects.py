"""Each training option changes what a step computes, as sd-scripts computes it.

Runs of the demo model are watched from outside the engine: global forward hooks on the
U-Net and the text encoder record what they receive and give back, and the step's loss is
computed again by hand from those tensors and from the documented seed (the step draws its
noise, the noise offset and the timesteps, in that order, from a generator seeded with
``training.seed``). A hand computation that agrees only when the option acts is the check
that it acts.
"""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from core.config.schema import LatentCache
from core.models.base_model import build_demo_model
from core.training.engine import Trainer
from core.training.events import Finished, ListSink, StepMetrics
from tests.engine_fixtures import tiny_config

GAMMA = 5.0
SEED = 120


class Calls:
    """What every U-Net and text-encoder call of a run received and returned."""

    def __init__(self) -> None:
        self.unet: list[dict[str, torch.Tensor]] = []
        self.text: list[torch.Tensor] = []
        self.attention_dtypes: set[torch.dtype] = set()  # of diffusers' attention blocks' outputs (U-Net, VAE)

    def __call__(self, module, args, kwargs, output) -> None:  # noqa: ANN001
        name = type(module).__name__
        if name == "UNet2DConditionModel":
            noisy, timesteps, states = (list(args) + [None] * 3)[:3]
            self.unet.append({
                "noisy": (noisy if noisy is not None else kwargs["sample"]).detach().clone(),
                "timesteps": (timesteps if timesteps is not None else kwargs["timestep"]).detach().clone(),
                "states": (states if states is not None else kwargs["encoder_hidden_states"]).detach().clone(),
                "prediction": output.sample.detach().clone()})
        elif name == "Attention":  # diffusers' (the text encoder's is CLIPAttention)
            self.attention_dtypes.add(output.dtype)
        elif name == "CLIPTextModel":
            ids = args[0] if args else kwargs["input_ids"]
            self.text.append(ids.detach().clone())


def _run(config) -> tuple[Finished, list[StepMetrics], Calls]:
    calls = Calls()
    handle = torch.nn.modules.module.register_module_forward_hook(calls, with_kwargs=True)
    try:
        sink = ListSink()
        result = Trainer(config, sink).run()
    finally:
        handle.remove()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    return result, sink.of(StepMetrics), calls


def _config(tmp_path, **training):
    config = tiny_config(tmp_path, steps=1)
    config.dataset.latent_cache = LatentCache.MEMORY  # the step's generator then draws only noise and timesteps
    # One 64 px bucket (latents 2x4x8x8) and a seed whose first two timesteps lie either side
    # of min-SNR's gamma (92: SNR above 5, weighed down; 742: below, left alone).
    config.dataset.enable_bucket = False
    config.training.seed = SEED
    for name, value in training.items():
        setattr(config.training, name, value)
    return config


def _sd_scripts_scheduler(v_prediction: bool) -> DDPMScheduler:
    # sd-scripts' training scheduler, built here rather than taken from the engine.
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False,
                         prediction_type="v_prediction" if v_prediction else "epsilon")


def _draws(shape: torch.Size, seed: int, noise_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first step's noise and timesteps, drawn as sd-scripts draws them."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, 1000, (shape[0],), generator=generator)
    return noise, timesteps


def _hand_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float,
                      v_prediction: bool) -> torch.Tensor:
    weights = []
    for t in timesteps.tolist():
        alpha_bar = float(scheduler.alphas_cumprod[t])
        snr = alpha_bar / (1.0 - alpha_bar)
        weights.append(min(snr, gamma) / (snr + 1.0 if v_prediction else snr))
    return torch.tensor(weights)


def _hand_loss(config, call: dict[str, torch.Tensor]) -> float:
    training = config.training
    v_prediction = config.model.v_parameterization
    scheduler = _sd_scripts_scheduler(v_prediction)
    noisy, timesteps = call["noisy"], call["timesteps"]
    noise, drawn = _draws(noisy.shape, training.seed, training.noise_offset)
    assert torch.equal(timesteps, drawn), "the step's timesteps are not the seed's first draw"
    alpha_bar = scheduler.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    latents = (noisy - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()  # noisy = sqrt(a) x0 + sqrt(1-a) eps
    target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    per_sample = ((call["prediction"] - target) ** 2).mean(dim=[1, 2, 3])
    if training.min_snr_gamma:
        per_sample = per_sample * _hand_snr_weights(scheduler, timesteps, training.min_snr_gamma, v_prediction)
    return float(per_sample.mean())


@pytest.mark.parametrize("v_prediction", [False, True], ids=["epsilon", "v_prediction"])
def test_the_step_loss_is_the_hand_computed_objective(tmp_path, v_prediction):
    config = _config(tmp_path, noise_offset=0.1, min_snr_gamma=GAMMA)
    config.model.v_parameterization = v_prediction
    _, steps, calls = _run(config)
    call = calls.unet[0]
    weights = _hand_snr_weights(_sd_scripts_scheduler(v_prediction), call["timesteps"], GAMMA, v_prediction)
    assert (weights < 0.999).any(), "this seed's timesteps leave min-SNR with nothing to weigh"
    assert steps[0].loss == pytest.approx(_hand_loss(config, call), rel=1e-4)


@pytest.mark.parametrize("option, value", [("noise_offset", 0.1), ("min_snr_gamma", GAMMA)])
def test_each_objective_option_changes_the_loss(tmp_path, option, value):
    """The hand computation above with the option left out does not match: the option acts."""
    config = _config(tmp_path, **{option: value})
    _, steps, calls = _run(config)
    assert steps[0].loss == pytest.approx(_hand_loss(config, calls.unet[0]), rel=1e-4)
    setattr(config.training, option, type(value)(0))
    with pytest.raises(AssertionError):
        assert steps[0].loss == pytest.approx(_hand_loss(config, calls.unet[0]), rel=1e-4)


def test_v_prediction_trains_towards_the_velocity(tmp_path):
    config = _config(tmp_path)
    config.model.v_parameterization = True
    _, steps, calls = _run(config)
    call = calls.unet[0]
    noise, _ = _draws(call["noisy"].shape, config.training.seed, 0.0)
    epsilon_loss = float(((call["prediction"] - noise) ** 2).mean())
    assert steps[0].loss == pytest.approx(_hand_loss(config, call), rel=1e-4)
    assert steps[0].loss != pytest.approx(epsilon_loss, rel=1e-2)


def test_min_snr_weights_are_sd_scripts_values():
    from core.training.loss import min_snr_weights

    timesteps = torch.tensor([0, 50, 200, 400, 999])  # SNR from ~1e3 down to ~5e-3: either side of gamma
    for v_prediction in (False, True):
        scheduler = _sd_scripts_scheduler(v_prediction)
        expected = _hand_snr_weights(scheduler, timesteps, GAMMA, v_prediction)
        got = min_snr_weights(scheduler.alphas_cumprod, timesteps, GAMMA, v_prediction)
        assert torch.allclose(got.float(), expected.float(), rtol=1e-5)
    assert 0 < expected[0] < 0.01 and expected[-1] < 0.01  # v: both ends are small


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_the_unet_attends_to_the_clip_skip_layer_through_the_final_norm(tmp_path, clip_skip):
    config = _config(tmp_path)
    config.model.clip_skip = clip_skip
    _, _, calls = _run(config)
    ids, states = calls.text[0], calls.unet[0]["states"]
    # The text-encoder LoRA starts at zero (its up weights are zeros), so the first step's
    # encoder is the base demo encoder, rebuilt here from the same seed.
    encoder = build_demo_model(0).text_encoders["text_encoder"]
    with torch.no_grad():
        output = encoder(ids, output_hidden_states=True)
        expected = getattr(encoder, "text_model", encoder).final_layer_norm(output.hidden_states[-clip_skip])
    assert states.shape == expected.shape
    assert torch.allclose(states, expected, atol=1e-5)
    if clip_skip > 1:
        assert not torch.allclose(states, output.last_hidden_state, atol=1e-3)


class OptimizerSteps:
    """Each optimizer step's gradients, by parameter group name, read just before it steps."""

    def __init__(self) -> None:
        self.grads: list[dict[str, list[torch.Tensor | None]]] = []

    def __call__(self, optimizer, args, kwargs) -> None:  # noqa: ANN001
        groups = optimizer.param_groups
        if not all("name" in g for g in groups) or type(optimizer).__name__ == "AcceleratedOptimizer":
            return  # accelerate's wrapper steps the optimizer inside it, which is recorded
        self.grads.append({g["name"]: [None if p.grad is None else p.grad.detach().clone() for p in g["params"]]
                           for g in groups})

    def norm(self, index: int) -> float:
        grads = [g for group in self.grads[index].values() for g in group if g is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _run_watching_steps(config) -> tuple[Finished, list[StepMetrics], Calls, OptimizerSteps]:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    steps = OptimizerSteps()
    handle = register_optimizer_step_pre_hook(steps)
    try:
        result, metrics, calls = _run(config)
    finally:
        handle.remove()
    return result, metrics, calls, steps


def test_every_loop_option_at_once_acts(tmp_path):
    from safetensors import safe_open

    from core.config.schema import MixedPrecision, NetworkType
    config = tiny_config(tmp_path, steps=3)
    config.dataset.resolution, config.dataset.enable_bucket = (64, 64), False  # small and quick
    config.model.v_parameterization = True
    config.model.clip_skip = 2
    config.training.noise_offset = 0.05
    config.training.min_snr_gamma = 5.0
    config.training.gradient_accumulation_steps = 2
    config.training.gradient_checkpointing = True
    config.training.max_grad_norm = 1e-3  # well under this run's gradient norms, so every step is clipped
    config.training.mixed_precision = MixedPrecision.BF16
    config.network.type, config.network.conv_dim, config.network.conv_alpha = NetworkType.LOCON, 2, 1.0
    config.network.dropout = 0.1
    config.dataset.latent_cache = LatentCache.OFF  # the VAE runs every step
    config.dataset.prior_loss_weight = 0.5
    vae_encodes = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: vae_encodes.append(1) if type(module).__name__ == "Encoder" else None)
    try:
        result, metrics, calls, steps = _run_watching_steps(config)
    finally:
        handle.remove()
    assert len(metrics) == 3 and all(math.isfinite(m.loss) for m in metrics)
    # Two micro-batches per optimizer step, the epoch's fifth batch a step alone; the VAE
    # encodes each of them (no cache).
    assert len(calls.unet) == 5 and len(steps.grads) == 3 and len(vae_encodes) == 5
    # bf16 autocast: the U-Net computes in bf16 (its frozen weights stay fp32 on a CPU; accelerate
    # hands its output back in fp32).
    assert torch.bfloat16 in calls.attention_dtypes  # (the VAE's attention runs outside autocast, in fp32)
    # max_grad_norm: every step's gradient is clipped to it.
    assert [steps.norm(i) for i in range(3)] == pytest.approx([1e-3] * 3, rel=1e-3)
    # clip skip 2 on the text encoder's 2 layers: the first layer's output, normed.
    assert calls.unet[0]["states"].shape[1:] == (77, 32)
    with safe_open(result.lora_path, "pt") as lora:
        metadata = lora.metadata()
        assert any("resnets" in k for k in lora.keys())  # LoCon's convolutions
    assert metadata["ss_gradient_accumulation_steps"] == "2" and metadata["ss_clip_skip"] == "2"
    assert metadata["ss_gradient_checkpointing"] == "True" and metadata["modelspec.prediction_type"] == "v"


def _text_encoder_grads(tmp_path, checkpointing: bool) -> tuple[list[torch.Tensor | None], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = _config(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
    config.network.train_text_encoder = True
    checkpointed = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, output: checkpointed.append(module.gradient_checkpointing)
        if type(module).__name__ == "CLIPEncoder" else None)
    try:
        result, _, _, steps = _run_watching_steps(config)
    finally:
        handle.remove()
    assert checkpointed and all(c is checkpointing for c in checkpointed)  # on (or off) where it matters
    [grads] = steps.grads
    text_group = next(name for name in grads if name == "text_encoder")
    return grads[text_group], load_file(result.lora_path)


def test_text_encoder_lora_learns_the_same_with_gradient_checkpointing(tmp_path):
    plain, _ = _text_encoder_grads(tmp_path, checkpointing=False)
    checkpointed, lora = _text_encoder_grads(tmp_path, checkpointing=True)
    assert len(checkpointed) == len(plain)
    assert all(g is not None for g in checkpointed), "a text-encoder LoRA weight got no gradient"
    for a, b in zip(checkpointed, plain):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)
    # At the first step only the up weights (zeros at the start) have a gradient; they moved.
    assert any(float(g.abs().max()) > 0 for g in checkpointed)
    ups = [t for k, t in lora.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    assert ups and all(float(t.abs().max()) > 0 for t in ups)
