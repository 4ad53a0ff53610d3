"""The SD 1.x family (and the built-in demo model, SD 1.x at toy size).

One CLIP-L text encoder whose states (CLIP skip applied, long captions in chunks of 75
tokens) are the U-Net's cross-attention context; LoRA on the attention blocks as
sd-scripts' networks/lora.py chooses them; Kohya names ``lora_unet_<diffusers path>`` and
``lora_te_text_model_<path>`` (SD 1.x LoRA files name the U-Net by its diffusers paths);
512 px, buckets in steps of 64; StableDiffusionPipeline for samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config.schema import DEMO_MODEL
from core.models.family import Cancelled, Status, Targets, TextConditioning
from core.models.blocks import SD1_BLOCKS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image
    from torch import nn

    from core.config.prompts import SamplePrompt
    from core.config.schema import NetworkParams, TrainConfig
    from core.models.components import ModelComponents

TEXT_ENCODER = "text_encoder"
# LoRA weights per unit of rank on SD 1.5 with core.models.lora's choice of modules (in + out
# features of each): 192 U-Net and 72 text-encoder modules; LoCon adds the ResNet blocks'
# 1x1 and Linear layers (per dim) and their 3x3 convolutions (per conv_dim).
# tests/test_bad_input.py recounts them from the shipped SD 1.5 configs.
LORA_PER_DIM = 589_824
LOCON_EXTRA_PER_DIM = 82_880
LOCON_PER_CONV_DIM = 544_000
TEXT_ENCODER_PER_DIM = 165_888
# The U-Net's share of those by block (core.models.blocks' numbering), for block_dims & co:
# per block, weights per rank of its LoRA modules, of LoCon's further Linear and 1x1 ones, and
# per conv rank of its 3x3 convolutions. tests/test_block_weights.py recounts them.
UNET_BLOCK_WEIGHTS = (
    (0, 0, 0), (11776, 1600, 6400), (11776, 1600, 6400), (0, 0, 3200), (22016, 2880, 9920),
    (22016, 1920, 12800), (0, 0, 6400), (42496, 4480, 19840), (42496, 2560, 25600), (0, 0, 12800),
    (0, 2560, 25600), (0, 2560, 25600), (42496, 5120, 51200), (0, 6400, 37120), (0, 6400, 37120),
    (0, 6400, 49920), (42496, 6400, 37120), (42496, 6400, 37120), (42496, 5760, 44160), (22016, 4480, 24320),
    (22016, 3840, 18560), (22016, 3520, 22080), (11776, 2880, 12160), (11776, 2560, 9280), (11776, 2560, 9280),)
_TE_ROOT = "text_model."
PREFIXES = {"unet": "lora_unet", TEXT_ENCODER: "lora_te"}


class SD1Family:
    name = "sd1"
    label = "SD 1.x"
    lora_architecture = "sd1"
    text_encoder_names = (TEXT_ENCODER,)
    default_resolution = 512
    bucket_step = 64
    vae_fp16_unsafe = False
    clip_skip_applies = True
    unet_blocks = SD1_BLOCKS

    # ------------------------------------------------------------------ loading
    def built_in_models(self) -> tuple[str, ...]:
        return (DEMO_MODEL,)

    def claims(self, spec: str) -> bool:
        return spec.strip() in self.built_in_models()

    def load(self, spec: str, *, vae: str = "", v_parameterization: bool = False,
             cancelled: Cancelled = None, status: Status = None,
             config_dir: Path | None = None) -> ModelComponents:
        """``config_dir`` is the weightless config folder single files are built from
        (default: the shipped SD 1.5 one)."""
        from core.models import loaders
        from core.models.checkpoint_files import SINGLE_FILE_SUFFIXES, ModelLoadError
        from core.models.sd15_files import sd15_config_dir

        spec = spec.strip()
        configs = config_dir or sd15_config_dir()
        if spec == DEMO_MODEL:
            components = self.build_demo(0, v_parameterization=v_parameterization)
            if vae:
                components.vae = loaders.load_vae_override(vae, configs, cancelled, status)
                components.vae_scale_factor = float(components.vae.config.scaling_factor)
            return components
        path = Path(spec).expanduser()
        if path.is_dir():
            parts = loaders.load_folder(path, vae, configs, cancelled, status)
        elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            parts = loaders.load_single_file(path, vae, configs, cancelled, status)
        else:
            raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                                 ".safetensors or .ckpt checkpoint or a diffusers folder")
        return self._assemble(parts, v_parameterization, path.name)

    def build_demo(self, seed: int = 0, *, v_parameterization: bool = False) -> ModelComponents:
        from core.models import demo

        unet, vae, text_encoder, tokenizer = demo.build_demo_modules(seed)
        return self._components(unet, vae, text_encoder, tokenizer, v_parameterization, "demo model", True)

    def config_dir(self) -> Path:
        from core.models.sd15_files import sd15_config_dir

        return sd15_config_dir()

    def check_model_file(self, spec: str) -> None:
        from core.models.loaders import check_base_model

        check_base_model(Path(spec).expanduser())

    def _assemble(self, parts: Any, v_parameterization: bool, source: str) -> ModelComponents:
        import torch

        for module in (parts.unet, parts.vae, parts.text_encoder):
            module.to(dtype=torch.float32)  # a no-op unless a folder held half-precision weights
            module.eval()
        return self._components(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, v_parameterization,
                                source, False)

    def _components(self, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, v_parameterization: bool,
                    source: str, is_demo: bool) -> ModelComponents:
        from core.models.components import ModelComponents, training_scheduler

        return ModelComponents(family=self.name, unet=unet, vae=vae, text_encoders={TEXT_ENCODER: text_encoder},
                               tokenizers={TEXT_ENCODER: tokenizer},
                               noise_scheduler=training_scheduler(v_parameterization),
                               vae_scale_factor=float(vae.config.scaling_factor), source=source, is_demo=is_demo)

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, components: ModelComponents, encoders: Mapping[str, nn.Module], captions: list[str], *,
                    clip_skip: int, max_token_length: int, device: torch.device) -> TextConditioning:
        from core.models.clip_text import encode, tokenize

        ids = tokenize(components.tokenizers[TEXT_ENCODER], captions, max_token_length).to(device)
        return TextConditioning(encode(encoders[TEXT_ENCODER], ids, clip_skip))

    def unet_inputs(self, text: TextConditioning, batch: Any) -> dict[str, Any]:
        return {"encoder_hidden_states": text.states}

    # ------------------------------------------------------------------ LoRA
    def lora_targets(self, component: str, module: nn.Module, network: NetworkParams) -> Targets:
        from core.models.lora import clip_targets, unet_targets

        return unet_targets(module, network) if component == "unet" else clip_targets(module, network)

    def lora_weights(self, network: NetworkParams) -> int:
        from core.config.schema import NetworkType

        from core.models.blocks import block_weights

        weights = 0
        if network.train_unet:
            per_block = block_weights(network, SD1_BLOCKS, UNET_BLOCK_WEIGHTS)
            if per_block is not None:
                weights += per_block
            else:
                weights += network.dim * (LORA_PER_DIM - TEXT_ENCODER_PER_DIM)
                if network.type.has_conv:
                    weights += network.dim * LOCON_EXTRA_PER_DIM + network.conv_dim * LOCON_PER_CONV_DIM
        if network.train_text_encoder:
            weights += network.dim * TEXT_ENCODER_PER_DIM
        # LoHa holds two pairs per module; LoKr and IA3 hold fewer than LoRA (counted as LoRA).
        return weights * 2 if network.type is NetworkType.LOHA else weights

    def kohya_name(self, component: str, module_path: str) -> str:
        if component != "unet" and not module_path.startswith(_TE_ROOT):
            # sd-scripts names CLIPTextModel's modules as they were (text_model.encoder...),
            # while transformers 5 exposes them one level higher (encoder.layers.N...).
            module_path = _TE_ROOT + module_path
        return f"{PREFIXES[component]}_{module_path.replace('.', '_')}"

    def lora_metadata(self, config: TrainConfig) -> dict[str, str]:
        return {"ss_base_model_version": "sd_v1", "ss_v2": "False",
                "modelspec.architecture": "stable-diffusion-v1/lora"}

    # ------------------------------------------------------------------ sampling
    def generate(self, components: ModelComponents, prompt: SamplePrompt, *, clip_skip: int, device: torch.device,
                 dtype: torch.dtype, max_token_length: int) -> Image.Image:
        import torch
        from diffusers import StableDiffusionPipeline

        from core.models.samplers import make_scheduler

        prediction = components.noise_scheduler.config.prediction_type
        pipe = StableDiffusionPipeline(
            vae=components.vae, text_encoder=components.text_encoders[TEXT_ENCODER],
            tokenizer=components.tokenizers[TEXT_ENCODER], unet=components.unet,
            scheduler=make_scheduler(prompt.sampler, prediction), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            # The prompts are encoded here, not by the pipeline, which would cut them at 77 tokens.
            positive, negative = self.prompt_states(components, prompt, clip_skip, max_token_length)
            result = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, width=prompt.width,
                          height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale,
                          generator=generator)
        return result.images[0]

    def prompt_states(self, components: ModelComponents, prompt: SamplePrompt, clip_skip: int,
                      max_token_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's and the negative prompt's states, encoded as training encodes captions
        (chunks of 75 tokens past 75), so a sample sees the same long prompt a caption would.
        The negative prompt gets the same length: classifier-free guidance pairs them."""
        from core.models.clip_text import encode, tokenize

        encoder = components.text_encoders[TEXT_ENCODER]
        device = next(encoder.parameters()).device
        ids = tokenize(components.tokenizers[TEXT_ENCODER], [prompt.prompt, prompt.negative or ""], max_token_length)
        states = encode(encoder, ids.to(device), clip_skip)
        return states[:1], states[1:]


FAMILY = SD1Family()
