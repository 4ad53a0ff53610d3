"""The SDXL family: the tiny built-in SDXL, loading SDXL as users download it (single files in
the original layout, fp16 or fp32, and diffusers folders) offline, the family read from the
file, the files it refuses by name, and the conditioning its U-Net is called with."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.config.prompts import SamplePrompt
from core.config.schema import DEMO_MODEL, ModelFamily, Sampler, TrainConfig
from core.models.base_model import ModelLoadError, load_base_model
from core.models.checkpoint_files import folder_kind, model_kind
from core.models.components import ModelComponents
from core.models.demo_sdxl import write_demo_sdxl_config_dir
from core.models.family import UnsupportedFamily, family_for, family_named
from core.models.sdxl import DEMO_SDXL_MODEL, FAMILY
from core.training.validation import validate
from tests.engine_fixtures import tiny_config
from tests.ldm_checkpoint import write_ldm_checkpoint
from tests.sdxl_checkpoint import write_sdxl_checkpoint

CPU = torch.device("cpu")
ENCODERS = ("text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def demo() -> ModelComponents:
    return FAMILY.build_demo(3)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdxl")


@pytest.fixture(scope="module")
def configs(work: Path) -> Path:
    return write_demo_sdxl_config_dir(work / "configs")


def _modules(components: ModelComponents) -> dict[str, torch.nn.Module]:
    return {"unet": components.unet, "vae": components.vae, **components.text_encoders}


def _assert_same_weights(expected: ModelComponents, loaded: ModelComponents, atol: float = 0.0) -> None:
    for name, module in _modules(expected).items():
        got = dict(_modules(loaded)[name].state_dict())
        for key, value in module.state_dict().items():
            if key.endswith("position_ids"):
                continue
            assert got[key].dtype == torch.float32, (name, key)
            assert torch.allclose(got[key], value, atol=atol, rtol=0), (name, key)


def _captions_encoded(components: ModelComponents, captions: list[str], length: int = 75, clip_skip: int = 1):
    with torch.no_grad():
        return FAMILY.encode_text(components, components.text_encoders, captions, clip_skip=clip_skip,
                                  max_token_length=length, device=CPU)


# ---------------------------------------------------------------- the family and its demo


def test_sdxl_is_a_built_in_family_with_its_constants() -> None:
    family = family_named("sdxl")
    assert family is FAMILY and family.label == "SDXL" and family.lora_architecture == "sdxl"
    assert family.text_encoder_names == ENCODERS
    assert (family.default_resolution, family.bucket_step, family.vae_fp16_unsafe) == (1024, 32, True)
    assert family_for(DEMO_SDXL_MODEL, "auto") is family and family_for(DEMO_SDXL_MODEL, "sdxl") is family
    assert family_for(DEMO_MODEL, "auto") is family_named("sd1")
    assert ModelFamily("auto") is ModelFamily.AUTO and TrainConfig().model.family is ModelFamily.AUTO


def test_the_tiny_sdxl_is_deterministic_per_seed_and_leaves_the_callers_rng_alone(demo) -> None:  # noqa: ANN001
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    again = FAMILY.build_demo(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    _assert_same_weights(demo, again)
    other = FAMILY.build_demo(4)
    assert not torch.equal(other.unet.conv_in.weight, demo.unet.conv_in.weight)
    assert demo.is_demo and demo.family == "sdxl" and set(demo.text_encoders) == set(ENCODERS)
    assert demo.unet.config.addition_embed_type == "text_time" and len(demo.unet.down_blocks) == 2
    assert demo.vae_scale_factor == pytest.approx(0.13025)
    assert load_base_model(DEMO_SDXL_MODEL).source == "SDXL demo model"


# ---------------------------------------------------------------- conditioning


def test_captions_give_both_penultimate_states_and_the_pooled_projection_of_encoder_2(demo) -> None:  # noqa: ANN001
    captions = ["a photo of a cat", "a dog"]
    text = _captions_encoded(demo, captions)
    assert text.states.shape == (2, 77, 32 + 64) and text.pooled.shape == (2, 32)
    # By hand: hidden_states[-2] of each encoder, no final layer norm, joined on the feature axis.
    te1, te2 = demo.text_encoders["text_encoder"], demo.text_encoders["text_encoder_2"]
    ids1 = demo.tokenizers["text_encoder"](captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = demo.tokenizers["text_encoder_2"](captions, padding="max_length", max_length=77,
                                             return_tensors="pt").input_ids
    assert int(ids2[1, -1]) == 0 and int(ids1[1, -1]) == 49407  # "!" pads encoder 2, the end token encoder 1
    with torch.no_grad():
        out1, out2 = te1(ids1, output_hidden_states=True), te2(ids2, output_hidden_states=True)
        expected = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        assert torch.allclose(text.states, expected)
        # The pooled output: the final-normed state at each caption's first end token, projected.
        eos = (ids2 == 49407).int().argmax(dim=1)
        last = te2.text_model.final_layer_norm(out2.hidden_states[-1])
        pooled = te2.text_projection(last[torch.arange(2), eos])
    assert torch.allclose(text.pooled, pooled, atol=1e-6)
    # clip_skip does not apply to SDXL (sd-scripts ignores it): the penultimate layer always.
    assert torch.equal(_captions_encoded(demo, captions, clip_skip=2).states, text.states)


def test_long_captions_are_chunked_and_pooled_from_their_first_chunk(demo) -> None:  # noqa: ANN001
    short = ["a cat"]
    long_caption = ", ".join(["a red cat"] * 40)  # about 120 tokens
    text = _captions_encoded(demo, short + [long_caption], length=150)
    assert text.states.shape == (2, 152, 96) and text.pooled.shape == (2, 32)
    # A short caption's first chunk is exactly its 77-token window: the same pooled output.
    assert torch.allclose(text.pooled[0], _captions_encoded(demo, short).pooled[0], atol=1e-6)
    assert _captions_encoded(demo, [long_caption] * 2, length=225).states.shape == (2, 227, 96)


def test_the_tiny_unet_runs_with_the_time_ids_of_the_batch(demo) -> None:  # noqa: ANN001
    text = _captions_encoded(demo, ["a cat", "a dog"])
    noisy, timesteps = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    sizes = torch.tensor([[128.0, 96.0, 0.0, 16.0, 128.0, 128.0], [96.0, 128.0, 8.0, 0.0, 128.0, 128.0]])
    inputs = FAMILY.unet_inputs(text, SimpleNamespace(size_conditioning=sizes))
    assert set(inputs) == {"encoder_hidden_states", "added_cond_kwargs"}
    assert torch.equal(inputs["added_cond_kwargs"]["time_ids"], sizes)
    with torch.no_grad():
        out = demo.unet(noisy, timesteps, **inputs).sample
        other = demo.unet(noisy, timesteps, **FAMILY.unet_inputs(
            text, SimpleNamespace(size_conditioning=sizes.flip(0)))).sample
    assert out.shape == noisy.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, other)  # the time ids condition the U-Net
    with pytest.raises(ValueError, match="size and crop conditioning"):
        FAMILY.unet_inputs(text, SimpleNamespace(size_conditioning=None))


def test_samples_are_deterministic_per_seed(demo) -> None:  # noqa: ANN001
    prompt = SamplePrompt("a cat", "blurry", 64, 64, 2, 5.0, 42, Sampler.EULER_A, 1)
    kwargs = {"clip_skip": 1, "device": CPU, "dtype": torch.float32, "max_token_length": 75}
    first, again = FAMILY.generate(demo, prompt, **kwargs), FAMILY.generate(demo, prompt, **kwargs)
    other = FAMILY.generate(demo, SamplePrompt("a cat", "blurry", 64, 64, 2, 5.0, 43, Sampler.EULER_A, 1), **kwargs)
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name, dtype, atol", [("xl.safetensors", None, 0.0),
                                                ("xl-fp16.safetensors", torch.float16, 2e-3),
                                                ("xl.ckpt", None, 0.0)])
def test_an_original_layout_single_file_loads_as_the_model_it_was_written_from(demo, work, configs, name, dtype,
                                                                                 atol) -> None:  # noqa: ANN001
    path = write_sdxl_checkpoint(work / name, demo.unet, demo.vae, *demo.text_encoders.values(), dtype=dtype)
    assert family_for(str(path), "auto") is FAMILY
    said: list[str] = []
    loaded = load_base_model(str(path), config_dir=configs, status=said.append)
    assert loaded.family == "sdxl" and loaded.source == name and not loaded.is_demo
    assert "loading text encoder 2…" in said
    _assert_same_weights(demo, loaded, atol)
    assert all(not m.training for m in _modules(loaded).values())
    assert loaded.tokenizers["text_encoder_2"].pad_token_id == 0
    captions = ["a photo of a cat"]
    assert torch.allclose(_captions_encoded(loaded, captions).states, _captions_encoded(demo, captions).states,
                          atol=1e-5 if atol == 0 else 0.05)


def test_a_diffusers_folder_loads_offline(demo, work) -> None:  # noqa: ANN001
    folder = work / "sdxl-folder"
    for name, module in _modules(demo).items():
        module.save_pretrained(str(folder / name))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}), "utf-8")
    assert folder_kind(folder) == "sdxl" and family_for(str(folder), "auto") is FAMILY
    loaded = load_base_model(str(folder))
    _assert_same_weights(demo, loaded)
    assert loaded.tokenizers["text_encoder_2"].pad_token == "!"  # no tokenizers there: the shipped ones
    FAMILY.check_model_file(str(folder))


# ---------------------------------------------------------------- detection and refusals


def _header_file(path: Path, names: dict[str, tuple[int, ...]]) -> Path:
    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in names.items()}, str(path))
    return path


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.mark.parametrize("name, names, kind, message", [
    ("refiner.safetensors", {"conditioner.embedders.0.model.text_projection": (8, 8), UNET_IN: (8, 4, 3, 3),
                             "model.diffusion_model.label_emb.0.0.weight": (8, 2560)},
     "sdxl_refiner", "refiner.safetensors is an SDXL refiner"),
    ("sd3.safetensors", {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (24, 8),
                         "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (8,)},
     "sd3", "sd3.safetensors is a Stable Diffusion 3 model (MMDiT joint_blocks)"),
    ("flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (24, 8), "single_blocks.0.linear1.weight": (8, 8)},
     "flux", "flux.safetensors is a Flux model"),
    ("xl-style.safetensors", {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 8),
                              "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 8)},
     "sdxl_lora", "xl-style.safetensors is an SDXL LoRA (lora_te1_/lora_te2_ or SDXL-sized keys), not a base model"),
    ("v2.safetensors", {"cond_stage_model.model.token_embedding.weight": (4, 8), UNET_IN: (8, 4, 3, 3)},
     "sd2", "v2.safetensors is an SD 2.x checkpoint: SD 2.x is not supported yet"),
    ("half-xl.safetensors", {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight":
                             (4, 8), UNET_IN: (8, 4, 3, 3)},
     "sdxl", "half-xl.safetensors has no text encoder 2 (OpenCLIP bigG) weights"),
])
def test_files_that_cannot_be_trained_are_named_on_the_base_model(tmp_path, name, names, kind, message) -> None:  # noqa: ANN001
    path = _header_file(tmp_path / name, names)
    assert model_kind({k: v for k, v in names.items()}) == kind
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_base_model(str(path))
    config = tiny_config(tmp_path, 1)
    config.model.base_model = str(path)
    problems = [p for p in validate(config) if p.severity == "error"]
    assert [p.path for p in problems] == ["model.base_model"] and problems[0].message.startswith(message)


def test_a_family_setting_that_disagrees_with_the_file_says_what_to_set(demo, work) -> None:  # noqa: ANN001
    xl = write_sdxl_checkpoint(work / "disagree-xl.safetensors", demo.unet, demo.vae, *demo.text_encoders.values())
    with pytest.raises(UnsupportedFamily, match="disagree-xl.safetensors is an SDXL model, but model.family is "
                                                "SD 1.x; set model.family to sdxl or auto"):
        family_for(str(xl), "sd1")
    sd1 = load_base_model(DEMO_MODEL)
    v1 = write_ldm_checkpoint(work / "v1.safetensors", sd1.unet, sd1.vae, sd1.text_encoders["text_encoder"])
    assert family_for(str(v1), "auto").name == "sd1"
    with pytest.raises(UnsupportedFamily, match="v1.safetensors is an SD 1.x model, but model.family is SDXL; "
                                                "set model.family to sd1 or auto"):
        family_for(str(v1), "sdxl")
    with pytest.raises(UnsupportedFamily, match="builtin:demo-model is a model of the SD 1.x family, but "
                                                "model.family is SDXL; set model.family to sd1"):
        family_for(DEMO_MODEL, "sdxl")
    with pytest.raises(ModelLoadError, match="is an SDXL model, but model.family is SD 1.x"):
        load_base_model(str(xl), family="sd1")
    config = tiny_config(work / "run", 1)
    config.model.base_model, config.model.family = str(xl), ModelFamily.SD1
    assert [p.path for p in validate(config) if p.severity == "error"] == ["model.family"]


def test_folders_tell_their_family_from_their_configs(tmp_path) -> None:  # noqa: ANN001
    def folder(name: str, index: dict, unet: dict) -> Path:
        root = tmp_path / name
        (root / "unet").mkdir(parents=True)
        (root / "model_index.json").write_text(json.dumps(index), "utf-8")
        (root / "unet" / "config.json").write_text(json.dumps(unet), "utf-8")
        return root

    refiner = folder("xl-refiner", {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
                                    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                                    "requires_aesthetics_score": True},
                     {"addition_embed_type": "text_time", "projection_class_embeddings_input_dim": 2560})
    assert folder_kind(refiner) == "sdxl_refiner"
    with pytest.raises(ModelLoadError, match="xl-refiner is an SDXL refiner"):
        load_base_model(str(refiner))
    base = folder("xl-base", {"_class_name": "StableDiffusionXLPipeline"}, {"addition_embed_type": "text_time"})
    assert folder_kind(base) == "sdxl" and family_for(str(base), "auto") is FAMILY
    with pytest.raises(ModelLoadError, match="xl-base has no text_encoder/config.json"):
        load_base_model(str(base))
    assert folder_kind(folder("flux", {"_class_name": "FluxPipeline"}, {})) == "flux"
    assert folder_kind(folder("v1", {"_class_name": "StableDiffusionPipeline"}, {"cross_attention_dim": 768})) == "sd1"


def test_the_shipped_sdxl_configs_are_sdxl_base() -> None:
    from core.models.sdxl_files import load_tokenizers, sdxl_config_dir

    root = sdxl_config_dir()
    unet = json.loads((root / "unet" / "config.json").read_text("utf-8"))
    assert unet["cross_attention_dim"] == 2048 and unet["projection_class_embeddings_input_dim"] == 2816
    assert unet["transformer_layers_per_block"] == [1, 2, 10] and unet["addition_time_embed_dim"] == 256
    te2 = json.loads((root / "text_encoder_2" / "config.json").read_text("utf-8"))
    assert (te2["hidden_size"], te2["num_hidden_layers"], te2["num_attention_heads"], te2["intermediate_size"],
            te2["projection_dim"], te2["hidden_act"]) == (1280, 32, 20, 5120, 1280, "gelu")
    assert json.loads((root / "vae" / "config.json").read_text("utf-8"))["scaling_factor"] == 0.13025
    assert folder_kind(root) == "sdxl"
    tok1, tok2 = load_tokenizers()
    assert tok1("a cat").input_ids == tok2("a cat").input_ids == [49406, 320, 2368, 49407]
    assert (tok1.pad_token_id, tok2.pad_token_id, tok2.model_max_length) == (49407, 0, 77)
