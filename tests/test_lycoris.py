"""LyCORIS networks -- LoHa, LoKr (low-rank and whole factors), IA3 and DoRA: the tensors each
file holds, the weight change each file means (computed here from the file's tensors alone, as
ComfyUI and AUTOMATIC1111 compute it), starting as the base model, loading back, training,
resuming, and the forecast on the meta device."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F

from core.config.schema import NetworkParams, NetworkType
from core.kohya.lora_format import (KohyaFormatError, describe_lora, load_kohya_into, read_kohya_file,
                                    to_kohya_state_dict)
from core.kohya.metadata import save_lora_file
from core.models.lora import attach_lora
from core.models.lycoris import factorization
from core.models.sd1 import FAMILY as SD1
from core.models.sdxl import FAMILY as SDXL

L, C = NetworkType.LOHA, NetworkType.LOKR
NETWORKS = {
    "LoHa": NetworkParams(type=L, dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0),
    "LoKr": NetworkParams(type=C, dim=2, alpha=2.0, conv_dim=2, conv_alpha=1.0),  # low-rank w2
    "LoKr full": NetworkParams(type=C, dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, lokr_full_matrix=True),
    "LoKr factor 2, both": NetworkParams(type=C, dim=1, alpha=1.0, lokr_factor=2, lokr_decompose_both=True),
    "IA3": NetworkParams(type=NetworkType.IA3),
    "LoRA + DoRA": NetworkParams(type=NetworkType.LORA, dim=4, alpha=2.0, dora_wd=True),
    "LoCon + DoRA": NetworkParams(type=NetworkType.LOCON, dim=4, alpha=2.0, conv_dim=2, conv_alpha=3.0, dora_wd=True),
    "LoHa + DoRA": NetworkParams(type=L, dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, dora_wd=True),
    "LoKr + DoRA": NetworkParams(type=C, dim=2, alpha=2.0, conv_dim=2, conv_alpha=1.0, dora_wd=True),
}
TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # demo: Linear 32 -> 32
CONV = "lora_unet_down_blocks_2_resnets_0_conv1"  # demo: Conv2d 32 -> 64, 3x3


def _attach(family, network: NetworkParams, seed: int = 0):  # noqa: ANN001, ANN202
    return attach_lora(family.build_demo(seed), family, network)


def _randomise(handles, seed: int = 1) -> None:  # noqa: ANN001
    """Trained-looking weights: every trainable tensor random (dora_scale near the base norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handles.params(tuple(handles.targets)):
            p.copy_(p * (1 + 0.1 * torch.randn(p.shape, generator=g)) if p.shape[-1] == 1 and p.dim() > 1
                    and p.abs().min() > 0 else torch.randn(p.shape, generator=g) * 0.2)


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, rest = key.partition(".")
        grouped.setdefault(name, {})[rest] = tensor
    return grouped


def _file_weight(parts: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """The weight a front end makes of the base weight and one module's tensors, written from the
    formats' definitions (independently of core.models.lycoris)."""
    out, inp, *kernel = weight.shape
    if "weight" in parts:  # IA3: W scaled by 1 + w along the output rows or input columns
        w = parts["weight"]
        return weight * (1 + (w.reshape(1, -1, *[1] * len(kernel)) if parts["on_input"].item()
                              else w.reshape(-1, 1, *[1] * len(kernel))))
    if "hada_w1_a" in parts:
        rank = parts["hada_w1_b"].shape[0]
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        delta = delta.reshape(weight.shape) * (parts["alpha"].item() / rank)
    elif "lora_down.weight" in parts:
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        delta = (up.reshape(out, -1) @ down.reshape(down.shape[0], -1)).reshape(weight.shape)
        delta = delta * (parts["alpha"].item() / down.shape[0])
    else:  # LoKr: delta[a*B + b, c*D + d] = w1[a, c] * w2[b, d] (a Kronecker product)
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        else:
            w2 = (parts["lokr_w2_a"] @ parts["lokr_w2_b"]).reshape(parts["lokr_w2_a"].shape[0], inp // w1.shape[1],
                                                                   *kernel)
        low = parts.get("lokr_w1_b", parts.get("lokr_w2_b"))  # ComfyUI: dim from w1_b, else w2_b
        scale = 1.0 if low is None else parts["alpha"].item() / low.shape[0]
        delta = torch.einsum("ac,bd...->abcd...", w1, w2).reshape(weight.shape) * scale
    merged = weight + delta
    if "dora_scale" in parts:  # DoRA: each output channel's norm replaced by dora_scale
        norm = merged.reshape(out, -1).norm(dim=1).reshape(out, *[1] * (weight.dim() - 1))
        merged = merged * parts["dora_scale"].reshape(out, *[1] * (weight.dim() - 1)) / norm
    return merged


def _check_every_module(handles, family) -> int:  # noqa: ANN001
    tensors = to_kohya_state_dict(handles, family, torch.float32)
    modules = _modules(tensors)
    g = torch.Generator().manual_seed(5)
    checked = 0
    for component, path, layer in handles.layers():
        base = layer.base_layer
        parts = modules[family.kohya_name(component, path)]
        weight = _file_weight(parts, base.weight.detach())
        if isinstance(base, torch.nn.Conv2d):
            x = torch.randn(2, base.in_channels, 6, 6, generator=g)
            want = F.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
        else:
            x = torch.randn(3, base.in_features, generator=g)
            want = F.linear(x, weight, base.bias)
        with torch.no_grad():
            got = layer(x)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), family.kohya_name(component, path)
        checked += 1
    return checked


# ---------------------------------------------------------------------------- LoKr's factors
def test_factorization_is_lycoris_rule():
    # Checked against lycoris-lora 4.1.3's own function (its docstring table is older than its code).
    assert factorization(32) == (4, 8) and factorization(128) == (8, 16) and factorization(1024) == (32, 32)
    assert factorization(640) == (20, 32) and factorization(2048) == (32, 64) and factorization(127) == (1, 127)
    assert factorization(512, 4) == (4, 128) and factorization(768, 8) == (8, 96)
    assert factorization(360, 16) == (15, 24)  # 16 does not divide 360: the squarest split up to 16


# ---------------------------------------------------------------------------- the file's tensors
def _shapes(network: NetworkParams) -> dict[str, dict[str, tuple[int, ...]]]:
    tensors = to_kohya_state_dict(_attach(SD1, network), SD1, torch.float16)
    return {name: {rest: tuple(t.shape) for rest, t in parts.items()} for name, parts in _modules(tensors).items()}


def test_loha_file_holds_hada_pairs_and_alpha():
    modules = _shapes(NETWORKS["LoHa"])
    assert modules[TO_K] == {"hada_w1_a": (32, 4), "hada_w1_b": (4, 32), "hada_w2_a": (32, 4), "hada_w2_b": (4, 32),
                             "alpha": ()}
    # a 3x3 convolution: the b factors span in_channels * 3 * 3, with conv_dim
    assert modules[CONV] == {"hada_w1_a": (64, 2), "hada_w1_b": (2, 288), "hada_w2_a": (64, 2), "hada_w2_b": (2, 288),
                             "alpha": ()}
    assert set(modules) == set(_shapes(NetworkParams(type=NetworkType.LOCON)))  # LoCon's layers


def test_lokr_file_holds_a_whole_small_factor_and_a_low_rank_large_one():
    modules = _shapes(NETWORKS["LoKr"])
    # 32 = 4 x 8 on both sides; dim 2 < 8 / 2, so w2 is low-rank
    assert modules[TO_K] == {"lokr_w1": (4, 4), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 8), "alpha": ()}
    assert modules[CONV] == {"lokr_w1": (8, 4), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 72), "alpha": ()}


def test_full_rank_lokr_keeps_both_factors_whole_with_scale_one():
    network = NETWORKS["LoKr full"]
    modules = _shapes(network)
    assert modules[TO_K] == {"lokr_w1": (4, 4), "lokr_w2": (8, 8), "alpha": ()}
    assert modules[CONV] == {"lokr_w1": (8, 4), "lokr_w2": (8, 8, 3, 3), "alpha": ()}
    tensors = to_kohya_state_dict(_attach(SD1, network), SD1, torch.float32)
    # LyCORIS stores alpha = dim there, so any loader's alpha / dim is 1
    assert tensors[f"{TO_K}.alpha"].item() == network.dim


def test_lokr_factor_and_decompose_both_shape_the_factors():
    modules = _shapes(NETWORKS["LoKr factor 2, both"])
    # factor 2: 32 = 2 x 16; dim 1 < 2 / 2 is false, so w1 stays whole; w2 (16 x 16) is low-rank
    assert modules[TO_K] == {"lokr_w1": (2, 2), "lokr_w2_a": (16, 1), "lokr_w2_b": (1, 16), "alpha": ()}
    ff_out = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"  # Linear 128 -> 32
    assert modules[ff_out]["lokr_w2_a"] == (16, 1) and modules[ff_out]["lokr_w2_b"] == (1, 64)


def test_ia3_file_holds_one_scale_per_channel_and_which_side_it_scales():
    modules = _shapes(NETWORKS["IA3"])
    assert modules[TO_K] == {"weight": (32,), "on_input": ()}
    ff_out = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"
    assert modules[ff_out] == {"weight": (128,), "on_input": ()}  # scaled on its 128 inputs
    tensors = to_kohya_state_dict(_attach(SD1, NETWORKS["IA3"]), SD1, torch.float32)
    assert tensors[f"{ff_out}.on_input"].item() == 1 and tensors[f"{TO_K}.on_input"].item() == 0
    # LyCORIS's ia3 preset: keys, values and the feed-forward output, in the U-Net and CLIP
    ends = ("_to_k", "_to_v", "_ff_net_2", "_self_attn_k_proj", "_self_attn_v_proj", "_mlp_fc2")
    assert {next(e for e in ends if name.endswith(e)) for name in modules} == set(ends)


def test_dora_adds_dora_scale_per_output_channel_to_the_lora_layout():
    modules = _shapes(NETWORKS["LoCon + DoRA"])
    assert modules[TO_K] == {"lora_down.weight": (4, 32), "lora_up.weight": (32, 4), "alpha": (), "dora_scale": (32, 1)}
    assert modules[CONV]["dora_scale"] == (64, 1, 1, 1) and modules[CONV]["lora_down.weight"] == (2, 32, 3, 3)
    assert _shapes(NETWORKS["LoHa + DoRA"])[TO_K]["dora_scale"] == (32, 1)


@pytest.fixture(scope="module")
def full_sdxl() -> dict[str, torch.nn.Module]:
    from tests.sdxl_checkpoint import full_size_sdxl_on_meta

    return full_size_sdxl_on_meta()


def _sdxl_shapes(full: dict[str, torch.nn.Module], network: NetworkParams) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module name -> tensor shapes for the full-size SDXL, built on the meta device."""
    import copy

    from core.models.components import ModelComponents

    models = {name: copy.deepcopy(module) for name, module in full.items()}
    components = ModelComponents(family=SDXL.name, unet=models["unet"], vae=None,
                                 text_encoders={k: v for k, v in models.items() if k != "unet"}, tokenizers={},
                                 noise_scheduler=None, vae_scale_factor=0.13025, source="test", is_demo=False)
    handles = attach_lora(components, SDXL, network)
    return {SDXL.kohya_name(c, p): {rest: tuple(t.shape) for rest, t in
                                     (layer.file_tensors().items() if handles.is_lycoris(layer) else ())}
            for c, p, layer in handles.layers()}


def test_full_size_sdxl_files_use_the_original_names_and_shapes(full_sdxl):
    to_k = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"  # Linear 2048 -> 640
    conv = "lora_unet_input_blocks_4_0_in_layers_2"  # Conv2d 320 -> 640, 3x3
    loha = _sdxl_shapes(full_sdxl, NetworkParams(type=L, dim=8, alpha=4.0, conv_dim=4, conv_alpha=1.0))
    assert loha[to_k] == {"hada_w1_a": (640, 8), "hada_w1_b": (8, 2048), "hada_w2_a": (640, 8),
                          "hada_w2_b": (8, 2048), "alpha": ()}
    assert loha[conv]["hada_w1_b"] == (4, 320 * 9)
    locon = _sdxl_shapes(full_sdxl, NetworkParams(type=NetworkType.LOCON, dim=8, alpha=4.0, conv_dim=4))
    assert set(loha) == set(locon)  # LoCon's modules: attention, ResNets and resamplers, both encoders
    lokr = _sdxl_shapes(full_sdxl, NetworkParams(type=C, dim=8, alpha=4.0, conv_dim=4, conv_alpha=1.0))
    # 640 = 20 x 32 and 2048 = 32 x 64: w1 (20, 32), w2 (32, 64) of rank 8
    assert lokr[to_k] == {"lokr_w1": (20, 32), "lokr_w2_a": (32, 8), "lokr_w2_b": (8, 64), "alpha": ()}
    ia3 = _sdxl_shapes(full_sdxl, NETWORKS["IA3"])
    assert ia3["lora_te2_text_model_encoder_layers_31_mlp_fc2"]["weight"] == (5120,)  # on its input
    assert ia3["lora_te1_text_model_encoder_layers_0_self_attn_k_proj"]["weight"] == (768,)
    dora = _sdxl_shapes(full_sdxl, NETWORKS["LoRA + DoRA"])
    assert dora[to_k]["dora_scale"] == (640, 1)


# ---------------------------------------------------------------------------- what the file means
@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_module_computes_the_weight_its_file_tensors_define(name):
    handles = _attach(SD1, NETWORKS[name])
    _randomise(handles)
    assert _check_every_module(handles, SD1) == sum(len(t) for t in handles.targets.values())


@pytest.mark.parametrize("name", ["LoHa", "LoKr", "IA3", "LoRA + DoRA"])
def test_sdxl_modules_compute_the_weight_their_file_tensors_define(name):
    handles = _attach(SDXL, NETWORKS[name])
    _randomise(handles)
    assert _check_every_module(handles, SDXL) > 0
    names = {SDXL.kohya_name(c, p) for c, p, _ in handles.layers()}
    assert any(n.startswith("lora_te2_") for n in names) and any("input_blocks" in n for n in names)


def _unet_output(handles) -> torch.Tensor:  # noqa: ANN001
    g = torch.Generator().manual_seed(3)
    sample, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return handles.models["unet"](sample, torch.tensor([300]), encoder_hidden_states=context).sample


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_new_network_leaves_the_model_as_it_was(name):
    untouched = _unet_output(_attach(SD1, NetworkParams(type=NetworkType.LORA)))  # peft LoRA: up = 0
    # DoRA's W * ||W|| / (||W|| + eps) rounds differently from W: equal to float32 precision
    assert torch.allclose(_unet_output(_attach(SD1, NETWORKS[name])), untouched, atol=1e-4)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_file_loads_back_with_every_key_used(tmp_path, name):
    handles = _attach(SD1, NETWORKS[name])
    _randomise(handles)
    save_lora_file(tmp_path / "net.safetensors", to_kohya_state_dict(handles, SD1, torch.float32), {})
    tensors, _ = read_kohya_file(tmp_path / "net.safetensors")
    fresh = _attach(SD1, NETWORKS[name])
    report = load_kohya_into(fresh, SD1, tensors)
    assert report.unexpected == [] and report.missing == []
    assert report.loaded == sum(len(t) for t in fresh.targets.values())
    assert torch.equal(_unet_output(fresh), _unet_output(handles))


def test_a_file_of_another_type_is_refused_naming_both():
    tensors = to_kohya_state_dict(_attach(SD1, NETWORKS["LoHa"]), SD1, torch.float32)
    with pytest.raises(KohyaFormatError, match="LoHa network, but the settings say LoKr"):
        load_kohya_into(_attach(SD1, NETWORKS["LoKr"]), SD1, tensors)
    dora = to_kohya_state_dict(_attach(SD1, NETWORKS["LoRA + DoRA"]), SD1, torch.float32)
    with pytest.raises(KohyaFormatError, match=r"LoRA \+ DoRA network, but the settings say LoRA"):
        load_kohya_into(_attach(SD1, NetworkParams(type=NetworkType.LORA, dim=4, alpha=2.0)), SD1, dora)


@pytest.mark.parametrize(("name", "label"), [("LoHa", "LoHa"), ("LoKr full", "LoKr"), ("IA3", "IA3"),
                                             ("LoCon + DoRA", "LoCon + DoRA"), ("LoKr + DoRA", "LoKr + DoRA")])
def test_describe_names_the_network_type(name, label):
    summary = describe_lora(to_kohya_state_dict(_attach(SD1, NETWORKS[name]), SD1, torch.float32), {})
    assert summary.network == label
    assert summary.n_modules == sum(len(t) for t in _attach(SD1, NETWORKS[name]).targets.values())


def test_describe_reads_dims_and_the_sdxl_context_from_lycoris_tensors(full_sdxl):
    summary = describe_lora(to_kohya_state_dict(_attach(SD1, NETWORKS["LoHa"]), SD1, torch.float32), {})
    assert (summary.dims, summary.alphas, summary.conv_dims, summary.conv_alphas) == ({4}, {2.0}, {2}, {1.0})
    full = describe_lora(to_kohya_state_dict(_attach(SD1, NETWORKS["LoKr full"]), SD1, torch.float32), {})
    assert full.full_rank == full.n_modules and full.dims == set()
    sdxl = describe_lora(to_kohya_state_dict(_attach(SDXL, NETWORKS["LoKr"]), SDXL, torch.float32), {})
    assert sdxl.architecture == "sdxl"


@pytest.mark.parametrize("name", ["LoHa", "LoKr", "IA3", "LoRA + DoRA"])
def test_diffusers_042_cannot_apply_lycoris_files_to_sd1(tmp_path, name):
    # Recorded, not wanted: diffusers 0.42's SD 1.x loader refuses LoHa, LoKr and IA3 keys and
    # drops dora_scale (with a warning), so these files are checked against their formulas above.
    # When this fails, diffusers has learnt them: add a reproduce-the-outputs test as for LoRA.
    from tests.test_kohya_format import _pipeline_with

    handles = _attach(SD1, NETWORKS[name])
    save_lora_file(tmp_path / "net.safetensors", to_kohya_state_dict(handles, SD1, torch.float32), {})
    if name == "LoRA + DoRA":
        _, messages = _pipeline_with(str(tmp_path / "net.safetensors"))
        assert any("dora_scale" in m for m in messages)
    else:
        with pytest.raises(ValueError, match="not been correctly renamed"):
            _pipeline_with(str(tmp_path / "net.safetensors"))


# ---------------------------------------------------------------------------- training
def _train(config, resume_from: Path | None = None, stop_at: int | None = None):  # noqa: ANN001, ANN202
    from core.training.control import Control
    from core.training.engine import Trainer
    from core.training.events import CallbackSink, ListSink, StepMetrics

    sink, control = ListSink(), Control()

    def emit(event) -> None:  # noqa: ANN001
        sink.emit(event)
        if stop_at and isinstance(event, StepMetrics) and event.step == stop_at:
            control.request_stop()

    result = Trainer(config, CallbackSink(emit), control, resume_from=resume_from).run()
    return result, [e.loss for e in sink.of(StepMetrics)]


@pytest.mark.parametrize("name", ["LoHa", "LoKr", "LoKr full", "IA3", "LoRA + DoRA"])
def test_each_type_trains_and_saves_its_file_with_lycoris_metadata(tmp_path, name):
    from tests.engine_fixtures import tiny_config

    config = tiny_config(tmp_path, steps=3)
    config.network = NETWORKS[name]
    config.network.train_text_encoder = True
    result, losses = _train(config)
    assert result.reason == "completed" and len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    tensors, metadata = read_kohya_file(result.lora_path)
    assert describe_lora(tensors, metadata).network == ("LoRA + DoRA" if name == "LoRA + DoRA" else name.split()[0])
    assert metadata["ss_network_module"] == "lycoris.kohya"
    args = json.loads(metadata["ss_network_args"])
    assert args["algo"] == {"LoHa": "loha", "LoKr": "lokr", "LoKr full": "lokr", "IA3": "ia3",
                            "LoRA + DoRA": "lora"}[name]
    # the zero-initialised factor learnt something
    zero_start = {"LoHa": "hada_w2_a", "LoKr": "lokr_w2_b", "LoKr full": "lokr_w2", "IA3": "weight",
                  "LoRA + DoRA": "lora_up.weight"}[name]
    assert tensors[f"{TO_K}.{zero_start}"].abs().max() > 0


def test_a_stopped_lokr_dora_run_resumes_on_the_same_curve(tmp_path):
    from tests.engine_fixtures import tiny_config

    def config_in(folder: Path):  # noqa: ANN202
        config = tiny_config(folder, steps=5)
        config.network = NETWORKS["LoKr + DoRA"]
        return config

    _, straight = _train(config_in(tmp_path / "straight"))
    config = config_in(tmp_path / "split")
    stopped, first = _train(config, stop_at=2)
    assert stopped.reason == "stopped"
    resumed, second = _train(config, resume_from=Path(stopped.run_dir))
    assert resumed.reason == "completed"
    assert first + second == pytest.approx(straight, rel=1e-5)


@pytest.mark.parametrize("name", ["LoHa", "LoKr", "IA3", "LoHa + DoRA"])
def test_the_vram_forecast_builds_each_type_on_the_meta_device(name):
    from core.config.schema import DEMO_MODEL, TrainConfig
    from core.training.vram_forecast import forecast_vram

    def trained(network: NetworkParams) -> int:
        config = TrainConfig()
        config.model.base_model = DEMO_MODEL
        config.network = network
        return forecast_vram(config).trained_weights

    lora = trained(NetworkParams(type=NetworkType.LORA, dim=4, alpha=2.0))
    got = trained(NETWORKS[name])
    assert got > 0
    if name == "IA3":
        assert got < lora  # one number per channel of a few layers


def test_the_file_size_estimate_counts_lohas_two_pairs_and_locons_layers():
    # the disk-space check's count without loading a model: LoHa twice LoCon's weights
    locon = NetworkParams(type=NetworkType.LOCON, dim=8, conv_dim=4)
    loha = NetworkParams(type=L, dim=8, conv_dim=4)
    for family in (SD1, SDXL):
        assert family.lora_weights(loha) == 2 * family.lora_weights(locon)
        assert family.lora_weights(NetworkParams(type=C, dim=8, conv_dim=4)) == family.lora_weights(locon)
