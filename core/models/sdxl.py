"""The SDXL family (SDXL base 1.0 and its fine-tunes: Illustrious, Pony, NoobAI, ...), and the
built-in SDXL demo model.

Two text encoders: CLIP ViT-L ("text_encoder", Kohya's te1) and OpenCLIP ViT-bigG with
projection ("text_encoder_2", te2). The U-Net attends to both encoders' penultimate hidden
states (hidden_states[-2], without the final layer norm) joined on the feature axis (768 +
1280 = 2048), and takes encoder 2's pooled, projected output with each image's six size and
crop "time ids" as its addition embedding. As in sd-scripts (get_hidden_states_sdxl),
clip_skip does not apply: both encoders always give their penultimate layer. Long captions
(150/225 tokens) are encoded in chunks of 75 like SD 1.x, the pooled output taken from each
caption's first chunk. LoRA modules are SD 1.x's rules; Kohya names use the original
(SAI/LDM) U-Net module names (core.models.sdxl_names) and lora_te1_/lora_te2_. 1024 px,
buckets in steps of 32, a VAE that overflows in fp16; StableDiffusionXLPipeline for samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.models.family import Cancelled, Status, Targets, TextConditioning
from core.models.blocks import SDXL_BLOCKS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from PIL import Image
    from torch import nn

    from core.config.prompts import SamplePrompt
    from core.config.schema import NetworkParams, TrainConfig
    from core.models.components import ModelComponents

DEMO_SDXL_MODEL = "builtin:demo-sdxl"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
PREFIXES = {"unet": "lora_unet", TEXT_ENCODER: "lora_te1", TEXT_ENCODER_2: "lora_te2"}
_TE_ROOT = "text_model."
# LoRA weights per unit of rank on SDXL base with core.models.lora's choice of modules (in +
# out features of each): 722 U-Net modules, 72 in encoder 1 and 192 in encoder 2; LoCon adds
# the ResNet blocks' Linear and 1x1 layers (per dim) and their 3x3 convolutions, down- and
# upsamplers (per conv_dim). tests/test_sdxl_keys.py recounts them on the meta device.
UNET_PER_DIM = 2_659_840
TEXT_ENCODER_PER_DIM = 165_888
TEXT_ENCODER_2_PER_DIM = 737_280
LOCON_EXTRA_PER_DIM = 58_560
LOCON_PER_CONV_DIM = 355_840
# The U-Net's share of those by block (core.models.blocks' numbering), for block_dims & co:
# per block, weights per rank of its LoRA modules, of LoCon's further Linear and 1x1 ones, and
# per conv rank of its 3x3 convolutions. tests/test_block_weights.py recounts them.
UNET_BLOCK_WEIGHTS = (
    (0, 0, 0), (0, 0, 0), (0, 1600, 6400), (0, 1600, 6400), (0, 0, 3200), (46592, 2880, 9920),
    (46592, 1920, 12800), (0, 0, 6400), (404480, 4480, 19840), (404480, 2560, 25600), (0, 2560, 25600),
    (404480, 0, 0), (0, 2560, 25600), (404480, 6400, 37120), (404480, 6400, 37120), (404480, 5760, 44160),
    (46592, 4480, 24320), (46592, 3840, 18560), (46592, 3520, 22080), (0, 2880, 12160), (0, 2560, 9280),
    (0, 2560, 9280), (0, 0, 0))


class SDXLFamily:
    name = "sdxl"
    label = "SDXL"
    lora_architecture = "sdxl"
    text_encoder_names = (TEXT_ENCODER, TEXT_ENCODER_2)
    default_resolution = 1024
    bucket_step = 32
    vae_fp16_unsafe = True
    clip_skip_applies = False  # sd-scripts' SDXL scripts always take the penultimate layer
    unet_blocks = SDXL_BLOCKS

    # ------------------------------------------------------------------ loading
    def built_in_models(self) -> tuple[str, ...]:
        return (DEMO_SDXL_MODEL,)

    def claims(self, spec: str) -> bool:
        return spec.strip() in self.built_in_models()

    def load(self, spec: str, *, vae: str = "", v_parameterization: bool = False,
             cancelled: Cancelled = None, status: Status = None,
             config_dir: Path | None = None) -> ModelComponents:
        """``config_dir`` is the weightless config folder single files are built from
        (default: the shipped SDXL base one)."""
        from core.models import loaders, sdxl_loaders
        from core.models.checkpoint_files import SINGLE_FILE_SUFFIXES, ModelLoadError
        from core.models.sdxl_files import sdxl_config_dir

        spec = spec.strip()
        configs = config_dir or sdxl_config_dir()
        if spec == DEMO_SDXL_MODEL:
            components = self.build_demo(0, v_parameterization=v_parameterization)
            if vae:
                components.vae = loaders.load_vae_override(vae, configs, cancelled, status)
                components.vae_scale_factor = float(components.vae.config.scaling_factor)
            return components
        path = Path(spec).expanduser()
        if path.is_dir():
            parts = sdxl_loaders.load_folder(path, vae, configs, cancelled, status)
        elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            parts = sdxl_loaders.load_single_file(path, vae, configs, cancelled, status)
        else:
            raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                                 ".safetensors or .ckpt checkpoint or a diffusers folder")
        import torch

        modules = (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2)
        for module in modules:
            module.to(dtype=torch.float32)  # fp16 files and folders: the trainer decides precision
            module.eval()
        return self._components(modules, (parts.tokenizer, parts.tokenizer_2), v_parameterization, path.name, False)

    def build_demo(self, seed: int = 0, *, v_parameterization: bool = False) -> ModelComponents:
        from core.models.demo_sdxl import build_demo_sdxl_modules
        from core.models.sdxl_files import load_tokenizers

        return self._components(build_demo_sdxl_modules(seed), load_tokenizers(), v_parameterization,
                                "SDXL demo model", True)

    def config_dir(self) -> Path:
        from core.models.sdxl_files import sdxl_config_dir

        return sdxl_config_dir()

    def check_model_file(self, spec: str) -> None:
        from core.models.sdxl_loaders import check_sdxl_model

        if not self.claims(spec):
            check_sdxl_model(Path(spec.strip()).expanduser())

    def _components(self, modules: tuple[Any, Any, Any, Any], tokenizers: tuple[Any, Any], v_parameterization: bool,
                    source: str, is_demo: bool) -> ModelComponents:
        from core.models.components import ModelComponents, training_scheduler

        unet, vae, text_encoder, text_encoder_2 = modules
        return ModelComponents(family=self.name, unet=unet, vae=vae,
                               text_encoders={TEXT_ENCODER: text_encoder, TEXT_ENCODER_2: text_encoder_2},
                               tokenizers={TEXT_ENCODER: tokenizers[0], TEXT_ENCODER_2: tokenizers[1]},
                               noise_scheduler=training_scheduler(v_parameterization),
                               vae_scale_factor=float(vae.config.scaling_factor), source=source, is_demo=is_demo)

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, components: ModelComponents, encoders: Mapping[str, nn.Module], captions: list[str], *,
                    clip_skip: int, max_token_length: int, device: torch.device) -> TextConditioning:
        """states (B, 77 or chunks * 75 + 2, width 1 + width 2), pooled (B, projection).
        ``clip_skip`` is ignored, as sd-scripts ignores it for SDXL."""
        import torch

        from core.models.clip_text import tokenize

        states = []
        pooled = None
        for name in self.text_encoder_names:
            ids = tokenize(components.tokenizers[name], captions, max_token_length).to(device)
            layer, projected = _penultimate(encoders[name], ids)
            states.append(layer)
            if name == TEXT_ENCODER_2:
                pooled = projected
        return TextConditioning(torch.cat(states, dim=-1), pooled)

    def unet_inputs(self, text: TextConditioning, batch: Any) -> dict[str, Any]:
        """The context, and the addition embedding's inputs: the pooled text and the batch's
        (B, 6) time ids (original h, w, crop top, left, target h, w) from the data pipeline."""
        time_ids = batch.size_conditioning
        if time_ids is None or text.pooled is None:
            what = "size and crop conditioning (Batch.size_conditioning)" if time_ids is None else "pooled text"
            raise ValueError(f"an SDXL U-Net needs each image's {what}, and this batch has none")
        # Kept in float32 (as diffusers builds them): the sinusoids of sizes up to 4096 need it.
        return {"encoder_hidden_states": text.states,
                "added_cond_kwargs": {"text_embeds": text.pooled,
                                      "time_ids": time_ids.to(text.states.device)}}

    # ------------------------------------------------------------------ LoRA
    def lora_targets(self, component: str, module: nn.Module, network: NetworkParams) -> Targets:
        from core.models.lora import clip_targets, unet_targets

        return unet_targets(module, network) if component == "unet" else clip_targets(module, network)

    def lora_weights(self, network: NetworkParams) -> int:
        from core.config.schema import NetworkType

        from core.models.blocks import block_weights

        weights = 0
        if network.train_unet:
            per_block = block_weights(network, SDXL_BLOCKS, UNET_BLOCK_WEIGHTS)
            weights += network.dim * UNET_PER_DIM if per_block is None else per_block
            if network.type.has_conv and per_block is None:
                weights += network.dim * LOCON_EXTRA_PER_DIM + network.conv_dim * LOCON_PER_CONV_DIM
        if network.train_text_encoder:
            weights += network.dim * (TEXT_ENCODER_PER_DIM + TEXT_ENCODER_2_PER_DIM)
        # LoHa holds two pairs per module; LoKr and IA3 hold fewer than LoRA (counted as LoRA).
        return weights * 2 if network.type is NetworkType.LOHA else weights

    def kohya_name(self, component: str, module_path: str) -> str:
        from core.models.sdxl_names import sai_unet_path

        if component == "unet":
            module_path = sai_unet_path(module_path)
        elif not module_path.startswith(_TE_ROOT):
            # CLIPTextModel's paths start at encoder.layers in transformers 5; sd-scripts names
            # them from text_model. (CLIPTextModelWithProjection still has that level).
            module_path = _TE_ROOT + module_path
        return f"{PREFIXES[component]}_{module_path.replace('.', '_')}"

    def lora_metadata(self, config: TrainConfig) -> dict[str, str]:
        return {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False",
                "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}

    # ------------------------------------------------------------------ sampling
    def generate(self, components: ModelComponents, prompt: SamplePrompt, *, clip_skip: int, device: torch.device,
                 dtype: torch.dtype, max_token_length: int) -> Image.Image:
        import torch
        from diffusers import StableDiffusionXLPipeline

        from core.models.samplers import make_scheduler

        prediction = components.noise_scheduler.config.prediction_type
        pipe = StableDiffusionXLPipeline(
            vae=components.vae, text_encoder=components.text_encoders[TEXT_ENCODER],
            text_encoder_2=components.text_encoders[TEXT_ENCODER_2], tokenizer=components.tokenizers[TEXT_ENCODER],
            tokenizer_2=components.tokenizers[TEXT_ENCODER_2], unet=components.unet,
            scheduler=make_scheduler(prompt.sampler, prediction), add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            # Encoded here as training encodes captions (the pipeline would cut at 77 tokens and
            # zero an empty negative prompt; sd-scripts encodes it).
            positive, negative = self.prompt_conditioning(components, prompt, max_token_length)
            result = pipe(prompt_embeds=positive.states, pooled_prompt_embeds=positive.pooled,
                          negative_prompt_embeds=negative.states, negative_pooled_prompt_embeds=negative.pooled,
                          width=prompt.width, height=prompt.height, num_inference_steps=prompt.steps,
                          guidance_scale=prompt.cfg_scale, generator=generator)
        return result.images[0]

    def prompt_conditioning(self, components: ModelComponents, prompt: SamplePrompt,
                            max_token_length: int) -> tuple[TextConditioning, TextConditioning]:
        """The prompt's and the negative prompt's conditioning, of the same length (classifier-
        free guidance pairs them)."""
        encoder = components.text_encoders[TEXT_ENCODER]
        device = next(encoder.parameters()).device
        both = self.encode_text(components, components.text_encoders, [prompt.prompt, prompt.negative or ""],
                                clip_skip=1, max_token_length=max_token_length, device=device)
        first, second = both.rows()
        return TextConditioning.stack([first]), TextConditioning.stack([second])


def _penultimate(encoder: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(penultimate states, pooled projection or None) of (B, 77) or (B, chunks, 77) ids;
    for chunks the states are joined as core.models.clip_text does and the pooled output is
    the first chunk's (sd-scripts: ``pool2[::n_size]``)."""
    from core.models.clip_text import join_chunks

    batch = ids.shape[0]
    output = encoder(ids.reshape(-1, ids.shape[-1]), output_hidden_states=True)
    states = output.hidden_states[-2]
    pooled = getattr(output, "text_embeds", None)
    if ids.dim() == 3:
        states = join_chunks(states, batch)
        pooled = None if pooled is None else pooled[::ids.shape[1]]
    return states, pooled


FAMILY = SDXLFamily()
