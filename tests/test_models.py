"""Base models: the demo model, single-file checkpoints, diffusers folders, and clear errors."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported anywhere

import pytest
import torch
from safetensors.torch import save_file

from core.config.schema import DEMO_MODEL
from core.models.base_model import (
    ModelLoadCancelled,
    ModelLoadError,
    ModelComponents,
    build_demo_model,
    inspect_checkpoint,
    load_base_model,
)
from tests.tiny_sd import write_demo_config_dir
from core.models.sd15_files import sd15_config_dir
from tests.ldm_checkpoint import (
    ldm_state_dict,
    write_ldm_checkpoint,
    write_ldm_vae,
    write_state_dict,
    write_zero_safetensors,
)

MODULES = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def demo() -> ModelComponents:
    return build_demo_model(0)


@pytest.fixture(scope="module")
def other_demo() -> ModelComponents:
    return build_demo_model(1)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def demo_configs(work: Path) -> Path:
    return write_demo_config_dir(work / "demo-configs")


@pytest.fixture(scope="module")
def demo_state(demo: ModelComponents) -> dict[str, torch.Tensor]:
    return ldm_state_dict(demo.unet, demo.vae, demo.text_encoders["text_encoder"])


def _digest(module: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        sha.update(name.encode())
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()


def _assert_same_weights(expected: ModelComponents, loaded: ModelComponents) -> None:
    for name in MODULES:
        want, got = _module(expected, name).state_dict(), _module(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        different = [k for k in want if not torch.equal(want[k], got[k])]
        assert not different, f"{name}: {different[:3]}"


def _module(components: ModelComponents, name: str) -> torch.nn.Module:
    return {**components.denoisers(), "vae": components.vae}[name]


def _patterns(module: torch.nn.Module) -> set[str]:
    """Names of the layers LoRA can target, with block and layer numbers blanked out."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    return {re.sub(r"\.\d+", ".#", name) for name, m in module.named_modules() if isinstance(m, kinds)}


# --- the demo model ------------------------------------------------------------------------


def test_demo_model_is_deterministic_per_seed_and_leaves_global_rng_alone(demo, other_demo):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    again = build_demo_model(0)
    assert torch.equal(torch.get_rng_state(), before)
    for name in MODULES:
        assert _digest(_module(again, name)) == _digest(_module(demo, name)), name
        assert _digest(_module(other_demo, name)) != _digest(_module(demo, name)), name


def test_demo_model_has_the_sd15_block_types_and_layer_names(demo):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_config_dir()
    with torch.device("meta"):  # the real shapes, without memory or time
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    for key in ("down_block_types", "up_block_types", "mid_block_type"):
        assert demo.unet.config[key] == unet.config[key]
    assert _patterns(demo.unet) == _patterns(unet)
    assert _patterns(demo.text_encoders["text_encoder"]) == _patterns(text)
    assert "encoder.layers.#.self_attn.q_proj" in _patterns(demo.text_encoders["text_encoder"])
    assert "down_blocks.#.attentions.#.transformer_blocks.#.attn2.to_k" in _patterns(demo.unet)
    assert demo.is_demo and demo.source == "demo model"
    assert demo.vae_scale_factor == pytest.approx(0.18215)


def test_demo_model_shapes_and_tokenizer(demo):
    latents = torch.randn(2, 4, 32, 32)
    context = torch.randn(2, 77, 32)
    with torch.no_grad():
        out = demo.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=context).sample
        encoded = demo.vae.encode(torch.randn(1, 3, 256, 256)).latent_dist.mean
        ids = demo.tokenizers["text_encoder"]("a photo of a cat").input_ids
        hidden = demo.text_encoders["text_encoder"](torch.tensor([ids])).last_hidden_state
    assert out.shape == (2, 4, 32, 32)
    assert encoded.shape == (1, 4, 32, 32)
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert hidden.shape == (1, 7, 32)


def test_training_scheduler_is_sd_scripts_ddpm():
    model = build_demo_model(0, v_parameterization=True)
    config = model.noise_scheduler.config
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert config.num_train_timesteps == 1000 and config.clip_sample is False
    assert config.prediction_type == "v_prediction"
    assert load_base_model(DEMO_MODEL).noise_scheduler.config.prediction_type == "epsilon"


def test_demo_spec_loads_the_seed_0_demo_model(demo):
    _assert_same_weights(demo, load_base_model(DEMO_MODEL))


# --- original-layout single files ----------------------------------------------------------


@pytest.mark.parametrize("suffix, ema", [(".safetensors", True), (".ckpt", False), (".ckpt", True)])
def test_original_layout_checkpoint_round_trips(demo, work, demo_configs, suffix, ema):
    path = write_ldm_checkpoint(work / f"round{int(ema)}{suffix}", demo.unet, demo.vae,
                                demo.text_encoders["text_encoder"], ema=ema)
    assert inspect_checkpoint(path) == "sd1"
    said: list[str] = []
    loaded = load_base_model(str(path), config_dir=demo_configs, status=said.append)
    _assert_same_weights(demo, loaded)  # the live weights, not the (different) EMA copies
    assert loaded.source == path.name and not loaded.is_demo
    assert said[0].startswith("reading") and "loading U-Net…" in said
    assert loaded.tokenizers["text_encoder"]("a photo of a cat").input_ids[1:-1] == [320, 1125, 539, 320, 2368]
    assert all(p.dtype == torch.float32 for name in MODULES for p in _module(loaded, name).parameters())


def test_half_precision_checkpoint_loads_as_float32(demo, work, demo_configs):
    path = write_ldm_checkpoint(work / "half.safetensors", demo.unet, demo.vae, demo.text_encoders["text_encoder"],
                                dtype=torch.float16)
    loaded = load_base_model(str(path), config_dir=demo_configs)
    weight = loaded.unet.conv_in.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, demo.unet.conv_in.weight.half().float())


def test_text_encoder_keys_without_text_model_level_load(demo, demo_state, work, demo_configs):
    old_style = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
                 for k, v in demo_state.items()}
    path = write_state_dict(work / "old-clip.safetensors", old_style)
    _assert_same_weights(demo, load_base_model(str(path), config_dir=demo_configs))


class FakeCallback:
    """Stands for the Lightning callback old training .ckpt files pickle next to the weights.

    Unpickling the real class would run this __setstate__; the loader must not.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __getstate__(self) -> dict[str, str]:
        return {"marker": self.marker}

    def __setstate__(self, state: dict[str, str]) -> None:
        os.mkdir(state["marker"])


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # unpickling calls os.mkdir(target)
        return (os.mkdir, (self.target,))


def test_ckpt_with_foreign_objects_loads_without_running_them(demo, demo_state, work, demo_configs):
    marker = work / "callback-ran"
    path = work / "lightning.ckpt"
    torch.save({"state_dict": demo_state, "callbacks": {"ModelCheckpoint": FakeCallback(str(marker))},
                "global_step": 470000, "numpy_value": __import__("numpy").float64(1.5)}, path)
    _assert_same_weights(demo, load_base_model(str(path), config_dir=demo_configs))
    assert not marker.exists()


def test_ckpt_that_would_run_code_is_refused(demo_state, work, demo_configs):
    marker = work / "evil-ran"
    path = work / "evil.ckpt"
    torch.save({"state_dict": demo_state, "payload": _Evil(str(marker))}, path)
    with pytest.raises(ModelLoadError, match="evil.ckpt holds Python objects besides weights"):
        load_base_model(str(path), config_dir=demo_configs)
    assert not marker.exists()


def test_cancelled_between_components(demo, work, demo_configs):
    path = write_ldm_checkpoint(work / "cancel.safetensors", demo.unet, demo.vae, demo.text_encoders["text_encoder"])
    said: list[str] = []
    with pytest.raises(ModelLoadCancelled):
        load_base_model(str(path), config_dir=demo_configs, status=said.append,
                        cancelled=lambda: "loading U-Net…" in said)
    assert said[-1] == "loading U-Net…"


# --- diffusers folders and VAE overrides -----------------------------------------------------


def _save_folder(model: ModelComponents, folder: Path, **kwargs: object) -> Path:
    model.unet.save_pretrained(folder / "unet", **kwargs)
    model.vae.save_pretrained(folder / "vae", **kwargs)
    model.text_encoders["text_encoder"].save_pretrained(folder / "text_encoder", **kwargs)
    model.tokenizers["text_encoder"].save_pretrained(folder / "tokenizer")
    model.noise_scheduler.save_pretrained(folder / "scheduler")
    shutil.copyfile(sd15_config_dir() / "model_index.json", folder / "model_index.json")
    return folder


def test_diffusers_folder_loads(demo, work):
    folder = _save_folder(demo, work / "demo-diffusers")
    loaded = load_base_model(str(folder))
    _assert_same_weights(demo, loaded)
    assert loaded.source == "demo-diffusers"


def test_diffusers_folder_with_only_fp16_weights_loads(demo, work):
    half = build_demo_model(0)
    for name in MODULES:
        _module(half, name).half()
    folder = _save_folder(half, work / "demo-fp16", variant="fp16")
    loaded = load_base_model(str(folder))
    assert loaded.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(loaded.unet.conv_in.weight, demo.unet.conv_in.weight.half().float())


def test_vae_override_from_original_layout_file_and_from_folder(demo, other_demo, work, demo_configs):
    base = write_ldm_checkpoint(work / "base.ckpt", demo.unet, demo.vae, demo.text_encoders["text_encoder"])
    vae_file = write_ldm_vae(work / "other-vae.safetensors", other_demo.vae)
    loaded = load_base_model(str(base), vae=str(vae_file), config_dir=demo_configs)
    assert _digest(loaded.vae) == _digest(other_demo.vae)
    assert _digest(loaded.unet) == _digest(demo.unet)
    diffusers_layout = _write(work / "diffusers-vae.safetensors", other_demo.vae.state_dict())
    loaded = load_base_model(str(base), vae=str(diffusers_layout), config_dir=demo_configs)
    assert _digest(loaded.vae) == _digest(other_demo.vae)
    other_demo.vae.save_pretrained(work / "other-vae-folder")
    loaded = load_base_model(DEMO_MODEL, vae=str(work / "other-vae-folder"))
    assert _digest(loaded.vae) == _digest(other_demo.vae)


def test_checkpoint_without_vae_needs_an_override(demo, other_demo, demo_state, work, demo_configs):
    no_vae = {k: v for k, v in demo_state.items() if not k.startswith("first_stage_model.")}
    path = write_state_dict(work / "no-vae.safetensors", no_vae)
    with pytest.raises(ModelLoadError, match="has no VAE weights"):
        load_base_model(str(path), config_dir=demo_configs)
    vae_file = write_ldm_vae(work / "vae.ckpt", other_demo.vae)
    loaded = load_base_model(str(path), vae=str(vae_file), config_dir=demo_configs)
    assert _digest(loaded.vae) == _digest(other_demo.vae)


def test_vae_override_that_is_not_a_vae(demo, work, demo_configs):
    lora = _write(work / "not-a-vae.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelLoadError, match="does not look like a VAE"):
        load_base_model(DEMO_MODEL, vae=str(lora))
    with pytest.raises(ModelLoadError, match="VAE .* does not exist"):
        load_base_model(DEMO_MODEL, vae=str(work / "missing-vae.safetensors"))


# --- detection and errors --------------------------------------------------------------------


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_POS = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"


@pytest.mark.parametrize("name, tensors, kind, message", [
    ("xl.safetensors", {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight":
                        torch.zeros(4, 8), UNET_IN: torch.zeros(8, 4, 3, 3)},
     "sdxl", "xl.safetensors has no text encoder 2 (OpenCLIP bigG) weights"),
    ("sd2.safetensors", {"cond_stage_model.model.token_embedding.weight": torch.zeros(4, 8),
                         UNET_IN: torch.zeros(8, 4, 3, 3)}, "sd2", "SD 2.x is not supported yet"),
    ("sd2-shape.safetensors", {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                               torch.zeros(320, 1024), UNET_IN: torch.zeros(8, 4, 3, 3),
                               CLIP_POS: torch.zeros(77, 8)}, "sd2", "SD 2.x is not supported yet"),
    ("style.safetensors", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                           "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
                           "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)},
     "lora", "style.safetensors is a LoRA, not a base model: choose it under network.init_weights"),
    ("peft.safetensors", {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)},
     "lora", "is a LoRA, not a base model"),
    ("embedding.safetensors", {"emb_params": torch.zeros(2, 768)},
     "unknown", "does not look like a Stable Diffusion 1.x checkpoint"),
])
def test_wrong_kinds_of_file_are_named(work, name, tensors, kind, message):
    path = _write(work / name, tensors)
    assert inspect_checkpoint(path) == kind
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load_base_model(str(path))


def test_inspect_checkpoint_reads_only_the_safetensors_header(demo, work, monkeypatch):
    import safetensors
    import safetensors.torch

    path = write_ldm_checkpoint(work / "header-only.safetensors", demo.unet, demo.vae, demo.text_encoders["text_encoder"])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read")

    for module, attribute in ((safetensors.torch, "load_file"), (safetensors.torch, "safe_open"),
                              (safetensors, "safe_open"), (torch, "load")):
        monkeypatch.setattr(module, attribute, refuse)
    assert inspect_checkpoint(path) == "sd1"


def test_cut_off_and_foreign_files_are_damaged(demo, demo_state, work):
    whole = write_state_dict(work / "whole.safetensors", demo_state).read_bytes()
    for cut, name in ((len(whole) // 2, "half.safetensors"), (5, "stub.safetensors"),
                      (len(whole) - 1, "one-short.safetensors")):
        path = work / name
        path.write_bytes(whole[:cut])
        with pytest.raises(ModelLoadError, match=rf"{name} is damaged or incomplete .*download it again"):
            load_base_model(str(path))
    whole_ckpt = write_state_dict(work / "whole.ckpt", demo_state).read_bytes()
    (work / "half.ckpt").write_bytes(whole_ckpt[: len(whole_ckpt) // 2])
    with pytest.raises(ModelLoadError, match="half.ckpt is damaged or incomplete"):
        load_base_model(str(work / "half.ckpt"))
    picture = work / "photo.safetensors"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ModelLoadError, match="not a .safetensors file at all"):
        inspect_checkpoint(picture)
    notes = work / "notes.ckpt"
    notes.write_text("these are my training notes", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        load_base_model(str(notes))


def test_paths_that_are_not_models(work):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(str(work / "nowhere.safetensors"))
    with pytest.raises(ModelLoadError, match="no base model chosen"):
        load_base_model("  ")
    with pytest.raises(ModelLoadError, match="not a built-in model"):
        load_base_model("builtin:big-model")
    (work / "readme.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not a model file LoRA Kiln can read"):
        load_base_model(str(work / "readme.txt"))
    (work / "empty-folder").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_base_model(str(work / "empty-folder"))


def test_inpainting_and_incomplete_checkpoints(demo_state, work, demo_configs):
    inpaint = dict(demo_state, **{UNET_IN: torch.zeros(32, 9, 3, 3)})
    path = write_state_dict(work / "inpaint.safetensors", inpaint)
    with pytest.raises(ModelLoadError, match=r"inpainting .*\(9 input channels\)"):
        load_base_model(str(path), config_dir=demo_configs)
    for dropped, what in (("model.diffusion_model.out.2.weight", "U-Net"),
                          ("first_stage_model.decoder.conv_in.weight", "VAE"),
                          ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "text encoder")):
        partial = {k: v for k, v in demo_state.items() if k != dropped}
        path = write_state_dict(work / "partial.safetensors", partial)
        with pytest.raises(ModelLoadError, match=f"partial.safetensors .*weights .*its {what}"):
            load_base_model(str(path), config_dir=demo_configs)


def test_demo_sized_file_against_sd15_configs_says_shapes_differ(demo, work):
    path = write_ldm_checkpoint(work / "toy.safetensors", demo.unet, demo.vae, demo.text_encoders["text_encoder"])
    with pytest.raises(ModelLoadError, match="toy.safetensors: its U-Net does not have the shapes"):
        load_base_model(str(path))


def test_only_the_harmless_log_lines_are_dropped():
    build_demo_model(0)  # installs the filters

    def passes(logger: str, message: str) -> bool:
        record = logging.getLogger(logger).makeRecord(logger, logging.WARNING, __file__, 1,
                                                      message, (), None)
        return bool(logging.getLogger(logger).filter(record))

    assert not passes("diffusers.models.modeling_utils",
                      "There are modules in UNet2DConditionModel that should be kept in float32: x")
    assert not passes("transformers.utils.import_utils",
                      "`CLIPImageProcessor` requires torchvision (not installed); falling back to x")
    assert passes("diffusers.models.modeling_utils", "Some weights were not initialized")
    assert passes("transformers.utils.import_utils", "something else is wrong")


# --- the real SD 1.5 shapes ---------------------------------------------------------------------


def _sd15_ldm_state_on_meta() -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_config_dir()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    return ldm_state_dict(unet, vae, text)


def test_sd15_sized_original_names_match_what_diffusers_expects():
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    state = _sd15_ldm_state_on_meta()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert CHECKPOINT_KEY_NAMES["v1"] in state and infer_diffusers_model_type(state) == "v1"
    assert shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert shapes["model.diffusion_model.output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes["model.diffusion_model.output_blocks.11.1.proj_out.weight"] == (320, 320, 1, 1)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"] == (768, 3072)


@pytest.mark.slow
def test_sd15_sized_checkpoint_loads_with_the_shipped_configs(work):
    """A full-size SD 1.5 file (zeros, sparse on disk) through the real config path.

    8 s on an idle 2-core machine (20 s on a busy one) and 7 GB of memory: 1.07 billion
    half-precision parameters are read and converted to float32.
    """
    path = write_zero_safetensors(work / "sd15-zeros.safetensors", _sd15_ldm_state_on_meta())
    assert inspect_checkpoint(path) == "sd1"
    loaded = load_base_model(str(path))
    counts = {name: sum(p.numel() for p in _module(loaded, name).parameters()) for name in MODULES}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert not any(p.is_meta for name in MODULES for p in _module(loaded, name).parameters())
    assert loaded.unet.config.cross_attention_dim == 768
    assert loaded.vae_scale_factor == pytest.approx(0.18215)
