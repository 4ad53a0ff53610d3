"""fp8 base weights (model.fp8_base / model.fp8_base_unet, core.models.fp8): the frozen weights of
plain Linear and Conv2d layers stored as float8_e4m3fn and cast up layer by layer; everything
else, the LoRA above all, as without.

Tolerances come from e4m3's precision: 3 mantissa bits, so rounding a weight moves it by at most
2**-4 of itself, and by 2**-4 / sqrt(3) (3.6 %) rms when the rounding error is spread evenly
over that interval. A layer's output, a sum of many products with independent errors, is off
by about the same fraction of itself. Along a chain of layers the errors add in quadrature;
the U-Nets' outputs are allowed the error of 16 layers in a row, 4 x 3.6 % = 14.4 %.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.config.schema import DEMO_MODEL, ModelParams, TrainConfig
from core.models.family import TextConditioning
from core.models.fp8 import STORAGE_DTYPE, Fp8Conv2d, Fp8Linear, fp8_components, fp8_layers, store_in_fp8
from core.models.sd1 import FAMILY as SD1
from core.models.sdxl import DEMO_SDXL_MODEL, FAMILY as SDXL
from core.training import setup

E4M3_RMS = 2**-4 / math.sqrt(3)  # rms relative rounding error of a weight in e4m3
UNET_TOLERANCE = math.sqrt(16) * E4M3_RMS
CPU = torch.device("cpu")
NAMES = ("unet", "text_encoder", "text_encoder_2")


def relative_rms(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().float(), reference.detach().float()
    return float((value - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())


def rounded_to_e4m3(module: nn.Module) -> nn.Module:
    """A copy whose frozen Linear / Conv2d weights hold the values fp8 storage keeps, in their own dtype."""
    twin = copy.deepcopy(module)
    for layer in twin.modules():
        if type(layer) in (nn.Linear, nn.Conv2d) and not layer.weight.requires_grad:
            layer.weight.data = layer.weight.data.to(STORAGE_DTYPE).to(layer.weight.dtype)
    return twin


# ---------------------------------------------------------------------------- which components
@pytest.mark.parametrize("fp8_base, fp8_base_unet, expected", [
    (False, False, ()),
    (True, False, NAMES),  # sd-scripts' --fp8_base: the U-Net and the text encoders
    (False, True, ("unet",)),  # --fp8_base_unet: the text encoders keep the training dtype
    (True, True, ("unet",)),  # fp8_base_unet decides for the text encoders
])
def test_the_two_switches_choose_components_as_sd_scripts_does(fp8_base, fp8_base_unet, expected):
    model = ModelParams(fp8_base=fp8_base, fp8_base_unet=fp8_base_unet)
    assert fp8_components(model, NAMES) == expected


# ---------------------------------------------------------------------------- one layer
@pytest.mark.parametrize("make, shape", [(lambda: nn.Linear(64, 48), (5, 7, 64)),
                                         (lambda: nn.Conv2d(16, 24, 3, padding=1), (2, 16, 9, 9))],
                         ids=["linear", "conv2d"])
def test_a_layer_computes_with_its_weight_rounded_to_e4m3_and_backpropagates_to_its_input(make, shape):
    torch.manual_seed(0)
    layer = make().requires_grad_(False)
    layer.bias.zero_()  # the tolerance is the weights' (the U-Net test below has biases)
    reference, rounded = copy.deepcopy(layer), rounded_to_e4m3(layer)
    assert store_in_fp8(layer, torch.float32) == 1
    assert layer.weight.dtype == STORAGE_DTYPE and layer.bias.dtype == torch.float32
    x = torch.randn(shape, requires_grad=True)
    x_rounded = x.detach().clone().requires_grad_(True)
    out, expected = layer(x), rounded(x_rounded)
    assert torch.equal(out, expected)  # the same sums, from the values fp8 keeps
    assert 0 < relative_rms(out, reference(x)) < E4M3_RMS
    grad = torch.randn(out.shape)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_rounded.grad, rtol=1e-5, atol=1e-6)


def test_the_layer_computes_in_the_autocast_dtype_where_autocast_is_on():
    layer = nn.Linear(8, 4).requires_grad_(False)
    store_in_fp8(layer, torch.float32)
    x = torch.randn(3, 8)
    assert layer(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_trainable_layers_and_other_modules_are_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(10, 4), nn.Linear(4, 4),
                          nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, padding_mode="reflect"))
    model.requires_grad_(False)
    model[3].requires_grad_(True)
    assert store_in_fp8(model, torch.float32) == 1
    assert fp8_layers(model) == ["0"]
    assert [p.dtype for p in model.parameters()].count(STORAGE_DTYPE) == 1


def test_ddp_wraps_a_model_with_fp8_weights_leaving_them_out_of_its_broadcast(tmp_path):
    """DDP sends every parameter from the first process when it wraps a model; gloo cannot send
    fp8 ("Invalid scalar type"). Frozen base weights are loaded alike by every process."""
    import torch.distributed as dist

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    store_in_fp8(model, torch.float32)
    assert model._ddp_params_and_buffers_to_ignore == ["0.weight"]
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        wrapped(torch.randn(3, 4)).sum().backward()
    finally:
        dist.destroy_process_group()
    assert model[1].weight.grad is not None and model[0].weight.dtype == STORAGE_DTYPE


# ---------------------------------------------------------------------------- the U-Nets
def _unet_inputs(family, unet: nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(0)
    config = unet.config
    latents = torch.randn(2, 4, 32, 32, generator=generator).bfloat16()
    states = torch.randn(2, 77, config.cross_attention_dim, generator=generator).bfloat16()
    pooled = None
    if family is SDXL:
        width = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        pooled = torch.randn(2, width, generator=generator).bfloat16()
    sizes = SimpleNamespace(size_conditioning=torch.tensor([[256, 256, 0, 0, 256, 256]] * 2, dtype=torch.float32))
    return latents, torch.tensor([10, 600]), family.unet_inputs(TextConditioning(states, pooled), sizes)


@pytest.mark.parametrize("family", [SD1, SDXL], ids=["sd1", "sdxl"])
def test_a_demo_unet_with_fp8_weights_matches_the_bf16_one_within_e4m3s_precision(family):
    unet = family.build_demo(0).unet.to(torch.bfloat16).requires_grad_(False).eval()
    bf16, rounded = copy.deepcopy(unet), rounded_to_e4m3(unet)
    store_in_fp8(unet, torch.bfloat16)
    latents, timesteps, inputs = _unet_inputs(family, unet)
    with torch.no_grad():
        out = unet(latents, timesteps, **inputs).sample
        expected = rounded(latents, timesteps, **inputs).sample
        reference = bf16(latents, timesteps, **inputs).sample
    assert torch.equal(out, expected)  # storage alone differs from the bf16 model with rounded weights
    error = relative_rms(out, reference)
    print(f"{family.name}: fp8 vs bf16 U-Net output, relative rms {error:.3f} (allowed {UNET_TOLERANCE:.3f})")
    assert 2**-9 < error < UNET_TOLERANCE  # more than bf16's own rounding: the weights really are fp8


# ---------------------------------------------------------------------------- prepare_network
def _network(fp8_base: bool = False, fp8_base_unet: bool = False, *, weight_dtype: torch.dtype = torch.bfloat16,
             checkpointing: bool = False, seed: int = 0) -> setup.Network:
    config = TrainConfig()
    config.model.fp8_base, config.model.fp8_base_unet = fp8_base, fp8_base_unet
    config.network.dim, config.network.alpha = 4, 4.0
    config.training.gradient_checkpointing = checkpointing
    torch.manual_seed(seed)  # peft draws the LoRA down weights from the global generator
    return setup.prepare_network(config, SD1, SD1.build_demo(0), CPU, weight_dtype, torch.float32)


def test_prepare_network_stores_the_frozen_linear_and_conv_weights_in_fp8_and_nothing_else():
    network = _network(fp8_base=True)
    lora = {id(p) for p in network.handles.params(tuple(network.handles.targets))}
    for name, module in network.components.denoisers().items():
        kinds: dict[str, set[torch.dtype]] = {}
        for path, param in module.named_parameters():
            owner = module.get_submodule(path.rsplit(".", 1)[0])
            if id(param) in lora:
                kind = "lora"
            elif isinstance(owner, (Fp8Linear, Fp8Conv2d)) and path.endswith(".weight"):
                kind = "fp8 layer weight"
            else:
                kind = type(owner).__name__ + (" bias" if path.endswith(".bias") else "")
            kinds.setdefault(kind, set()).add(param.dtype)
        assert kinds.pop("lora") == {torch.float32}, name
        assert kinds.pop("fp8 layer weight") == {STORAGE_DTYPE}, name
        # norms, embeddings and biases keep the training dtype
        assert set().union(*kinds.values()) == {torch.bfloat16}, (name, kinds)
        kept = {"unet": {"GroupNorm", "LayerNorm", "Fp8Conv2d bias", "Fp8Linear bias"},
                "text_encoder": {"Embedding", "LayerNorm", "Fp8Linear bias"}}[name]
        assert kept <= set(kinds), (name, kinds)
    assert all(p.dtype == torch.float32 for p in network.components.vae.parameters())  # the VAE is not a base weight
    # every LoRA's base layer is one of them
    assert all(isinstance(layer.base_layer, (Fp8Linear, Fp8Conv2d)) for _, _, layer in network.handles.layers())


def test_fp8_base_unet_keeps_the_text_encoder_in_the_training_dtype():
    network = _network(fp8_base_unet=True)
    assert fp8_layers(network.components.unet)
    assert fp8_layers(network.components.text_encoders["text_encoder"]) == []
    assert STORAGE_DTYPE not in {p.dtype for p in network.components.text_encoders["text_encoder"].parameters()}


def test_fp8_halves_the_bytes_of_the_frozen_linear_and_conv_weights():
    def frozen_bytes(network: setup.Network) -> int:
        return sum(p.numel() * p.element_size() for p in network.components.unet.parameters() if not p.requires_grad)

    plain, fp8 = frozen_bytes(_network()), frozen_bytes(_network(fp8_base=True))
    assert 0.5 < fp8 / plain < 0.52  # norms and biases stay in bf16


def _loss(network: setup.Network) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    unet = network.components.unet
    states = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    return unet(latents, torch.tensor([100, 700]), encoder_hidden_states=states).sample.pow(2).mean()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_lora_gradients_through_fp8_layers_are_those_of_the_rounded_model(checkpointing):
    """In fp32 compute, so only the weights' rounding could tell the two apart."""
    fp8 = _network(fp8_base=True, weight_dtype=torch.float32, checkpointing=checkpointing)
    rounded = _network(weight_dtype=torch.float32, checkpointing=checkpointing)
    rounded.components.unet = rounded_to_e4m3(rounded.components.unet)
    rounded.handles.models["unet"] = rounded.components.unet
    for network in (fp8, rounded):
        network.components.unet.train()
        for _, _, layer in network.handles.layers():
            up = network.handles.down_up(layer)[1]
            up.data = torch.linspace(-0.05, 0.05, up.numel()).view(up.shape)  # zero up weights pass no gradient down
        _loss(network).backward()
    grads = [[p.grad for p in network.handles.params(("unet",))] for network in (fp8, rounded)]
    assert all(g is not None for g in grads[0]) and any(bool(g.abs().sum()) for g in grads[0])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_the_saved_lora_does_not_depend_on_fp8():
    from core.kohya.lora_format import to_kohya_state_dict

    files = [to_kohya_state_dict(network.handles, SD1, torch.float16)
             for network in (_network(), _network(fp8_base=True))]
    assert list(files[0]) == list(files[1])
    for key in files[0]:
        assert files[0][key].dtype == files[1][key].dtype and torch.equal(files[0][key], files[1][key]), key


# ---------------------------------------------------------------------------- a run
def _run(root, fp8: bool, model: str):  # noqa: ANN001, ANN202
    from core.config.schema import MixedPrecision
    from core.training.engine import Trainer
    from core.training.events import Finished, ListSink, SampleImage
    from tests.engine_fixtures import tiny_config

    config = tiny_config(root, steps=2)
    config.model.base_model = model
    config.model.fp8_base = fp8
    config.training.mixed_precision = MixedPrecision.BF16  # autocast in bf16 on the CPU
    config.training.gradient_checkpointing = True
    config.sampling.prompts = "kiln --w 64 --h 64 --s 2"
    config.sampling.at_step_0, config.sampling.every_n_steps = True, 2
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    assert len(sink.of(SampleImage)) == 2
    return result


@pytest.mark.parametrize("model", [DEMO_MODEL, pytest.param(DEMO_SDXL_MODEL, marks=pytest.mark.slow)],
                         ids=["sd1", "sdxl"])
def test_a_run_with_fp8_trains_samples_and_writes_the_lora_file_it_writes_without(tmp_path, model):
    from pathlib import Path

    from safetensors import safe_open

    files = {}
    for fp8 in (False, True):
        run = Path(_run(tmp_path / str(fp8), fp8, model).run_dir)
        with safe_open(str(run / "tiny.safetensors"), "pt") as lora:
            files[fp8] = ({key: (lora.get_tensor(key).dtype, lora.get_tensor(key).shape) for key in lora.keys()},
                          lora.metadata())
        assert ("fp8 base weights" in (run / "log.txt").read_text("utf-8")) is fp8
    (plain, plain_meta), (fp8, fp8_meta) = files[False], files[True]
    assert fp8 == plain  # the same keys, dtypes and shapes
    assert set(fp8_meta) == set(plain_meta)
    assert (plain_meta["ss_fp8_base"], fp8_meta["ss_fp8_base"]) == ("False", "True")  # as sd-scripts records it
    assert fp8_meta["ss_fp8_base_unet"] == "False"
