"""The VRAM a run will need on a CUDA GPU, forecast on any machine in seconds: a dry run of the
engine's own step on PyTorch's meta device (shapes, no storage, no compute).

The configured model is built weightless from its family's configs (a built-in model from its
own), LoRA attached and everything cast and placed by the engine's setup.prepare_network in
the dtypes a CUDA GPU gets (setup.weight_dtype, placement.vae_dtype), the optimizer built by
setup.make_optimizer_and_schedule, and then, in the engine's order, under a
:class:`~core.training.tensor_tracker.StorageTracker`:

1. caching: the VAE encodes one batch (dataset.vae_batch_size) at the largest bucket while
   the U-Net waits on the CPU (as the engine does on one GPU), then leaves it (latents cached);
   text encoders whose outputs can be cached (placement.can_cache_text_states) wait on the
   CPU too, then come to the GPU, encode 16 captions (text_cache.TextStateCache.fill's batch)
   and leave it;
2. training: StepComputer.loss on a batch of the largest bucket, backward, gradient clipping,
   optimizer.step and zero_grad, as step.train_micro_batch runs them (its loss.item() and NaN
   guard cannot run on meta tensors, and move no memory). The optimizer state is made first by
   one step of the real optimizer (8-bit AdamW keeps its real uint8 state: bitsandbytes runs
   on meta), so the measured step is a steady-state one;
3. sampling, when the config draws samples: one classifier-free-guidance U-Net call at the
   sample size (batch 2) and the VAE decoding one image, with the VAE and text encoders
   borrowed back: an estimate of one denoising step of the family's pipeline.

CUDA's autocast and its fused attention kernels are stood in for by core.training.meta_kernels
(attention counted as flash / memory-efficient SDPA: no N x N matrix; eager attention as
eager). The tracker counts tensors as torch.cuda.memory_allocated does; the driver (nvidia-smi)
shows more: :data:`CUDA_CONTEXT_BYTES` and :data:`ALLOCATOR_SLACK` are that allowance.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from core.config.schema import Attention, LatentCache, MixedPrecision, SubsetParams, TrainConfig
from core.training import placement, setup

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.models.components import ModelComponents
    from core.models.family import Family

# The allowance between tensor bytes and what the driver shows, in one place. To be calibrated
# on a real GPU (benchmarks/gpu_check.py): the CUDA context with cuBLAS/cuDNN handles (~0.3-0.5
# GB, sdxl-and-memory.md §4), and the caching allocator's reserved-but-unallocated share.
CUDA_CONTEXT_BYTES = 400 * 2**20
ALLOCATOR_SLACK = 0.10

META = torch.device("meta")
CUDA = torch.device("cuda")
TEXT_CACHE_BATCH = 16  # captions text_cache.TextStateCache.fill encodes at a time
CAPTION = "a photo of a person"

FROZEN, TRAINED, OPTIMIZER, GRADIENTS, ACTIVATIONS, RESIDENT = (
    "frozen_weights", "trained_weights", "optimizer_state", "gradients", "activations", "resident_modules")
ATTENTION_NOTE = {Attention.SDPA: "attention counted as CUDA's flash / memory-efficient SDPA kernel (no N x N matrix)",
                  Attention.EAGER: "attention counted as eager attention (the N x N matrices stored)"}


@dataclass(frozen=True)
class VramForecast:
    """Bytes on the GPU. The training figures are what is live at the training step's peak."""

    frozen_weights: int  # the trained components' frozen base weights (U-Net, trained encoders)
    trained_weights: int  # LoRA weights, fp32
    optimizer_state: int
    gradients: int
    activations: int  # saved for backward and temporaries, inputs included
    resident_modules: int  # VAE / text encoders kept on the GPU while training (not cached)
    training_peak: int  # the sum of the six above
    caching_peak: int  # latent and text-encoder caching (the U-Net still on the CPU)
    sampling_peak: int | None  # None when the config draws no samples
    peak: int  # the largest of the phases: "tensors"
    driver: int  # as nvidia-smi will show it: peak + CUDA context + allocator slack
    bucket: tuple[int, int]  # (width, height) the step was run at
    batch_size: int
    attention: str
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["bucket"] = list(self.bucket)
        data["notes"] = list(self.notes)
        data["allowance"] = {"cuda_context_bytes": CUDA_CONTEXT_BYTES, "allocator_slack": ALLOCATOR_SLACK}
        return data

    def lines(self) -> list[str]:
        """For people (lorakiln plan / check)."""
        w, h = self.bucket
        rows = [f"VRAM forecast (batch {self.batch_size} at {w}x{h}): ≈ {gb(self.driver)} as the driver will "
                f"show it ({gb(self.peak)} of tensors)",
                f"  training step {gb(self.training_peak)}: frozen weights {gb(self.frozen_weights)}, "
                f"LoRA {gb(self.trained_weights)} + optimizer state {gb(self.optimizer_state)}, "
                f"gradients {gb(self.gradients)}, activations {gb(self.activations)}, "
                f"VAE / text encoders kept on the GPU {gb(self.resident_modules)}",
                f"  caching {gb(self.caching_peak)}"
                + ("" if self.sampling_peak is None else f", sampling {gb(self.sampling_peak)}")]
        return rows + [f"  {note}" for note in self.notes]


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


def driver_bytes(tensor_peak: int) -> int:
    return CUDA_CONTEXT_BYTES + int(tensor_peak * (1 + ALLOCATOR_SLACK))


# ---------------------------------------------------------------------------- the model, weightless
def config_dir_for(config: TrainConfig, family: Family) -> Path:
    """A diffusers folder's own configs, else the family's shipped ones (fine-tunes of a family
    share its architecture)."""
    spec = Path(config.model.base_model.strip()).expanduser()
    if spec.is_dir() and (spec / "model_index.json").is_file() and (spec / "unet" / "config.json").is_file():
        return spec
    return family.config_dir()


def meta_components(config: TrainConfig, family: Family) -> ModelComponents:
    """The configured model's modules on the meta device, in float32, in eval mode."""
    from core.models.base_model import _silence_harmless_messages
    from core.models.components import ModelComponents, training_scheduler
    from core.models.sdxl_files import load_clip_tokenizer

    _silence_harmless_messages()
    v_param = config.model.v_parameterization
    if family.claims(config.model.base_model):
        with torch.device(META):
            return family.build_demo(0, v_parameterization=v_param)
    root = config_dir_for(config, family)
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    with torch.device(META):
        modules = {name: _build(root, name, index) for name in ("unet", "vae", *family.text_encoder_names)}
    tokenizers = {name: load_clip_tokenizer(root / name.replace("text_encoder", "tokenizer"))
                  for name in family.text_encoder_names}
    for module in modules.values():
        module.eval()
    return ModelComponents(family=family.name, unet=modules["unet"], vae=modules["vae"],
                           text_encoders={n: modules[n] for n in family.text_encoder_names}, tokenizers=tokenizers,
                           noise_scheduler=training_scheduler(v_param),
                           vae_scale_factor=float(modules["vae"].config.scaling_factor),
                           source=f"{root.name} configs (no weights)", is_demo=False)


def _build(root: Path, name: str, index: dict[str, Any]) -> torch.nn.Module:
    import diffusers
    import transformers

    library, class_name = index[name]
    cls = getattr(diffusers if library == "diffusers" else transformers, class_name)
    if library == "diffusers":
        return cls.from_config(cls.load_config(str(root / name)))
    return cls(transformers.AutoConfig.from_pretrained(str(root / name)))


# ---------------------------------------------------------------------------- the dry run
def forecast_vram(config: TrainConfig, *, bucket: tuple[int, int] | None = None,
                  subsets: Sequence[SubsetParams] | None = None) -> VramForecast:
    """The forecast for ``config`` at ``bucket`` (width, height; default dataset.resolution:
    give the plan's largest bucket, see :func:`largest_bucket`). ``subsets`` decide whether
    captions can be cached (default: the config's). One at a time in a process: the app
    forecasts in background threads (one per window), and a dry run enters process-wide
    torch state (the meta device context's default device) that two at once could leave set."""
    from core.models.libraries import load_model_libraries

    load_model_libraries()  # a run or a grid may be importing them in another thread
    with _ONE_AT_A_TIME:
        return _forecast(config, bucket, subsets)


_ONE_AT_A_TIME = threading.Lock()


def _forecast(config: TrainConfig, bucket: tuple[int, int] | None,
              subsets: Sequence[SubsetParams] | None) -> VramForecast:
    from core.models.fp8 import fp8_components
    from core.training.meta_kernels import MetaCuda
    from core.training.step import StepComputer
    from core.training.tensor_tracker import StorageTracker

    config = replace(config, network=replace(config.network, init_weights=""))  # its values move no memory
    family = setup.run_family(config)
    precision = config.training.mixed_precision
    weight_dtype = setup.WEIGHT_DTYPES[precision]
    compute = None if precision is MixedPrecision.NO else weight_dtype
    width, height = bucket or tuple(config.dataset.resolution)
    batch_size = config.training.batch_size
    text_cached = placement.can_cache_text_states(config, list(config.dataset.subsets if subsets is None
                                                                else subsets))
    latents_cached = config.dataset.latent_cache is not LatentCache.OFF

    components = meta_components(config, family)
    network = setup.prepare_network(config, family, components, META, weight_dtype,
                                    placement.vae_dtype(config, family, weight_dtype, CUDA))
    optimizer, _ = setup.make_optimizer_and_schedule(config, network, 1)
    lora = network.handles.params(tuple(network.handles.targets))
    lora_ids = {id(p) for p in lora}
    trained_names = set(network.trained)
    frozen = [t for name, module in components.denoisers().items() if name in trained_names | {"unet"}
              for t in _tensors(module) if id(t) not in lora_ids]
    # The U-Net and its LoRA reach the GPU once caching is done (the engine keeps it on the CPU
    # until then on one GPU); a trained text encoder is there from the start.
    unet = {id(t) for t in _tensors(components.unet)}
    unet_frozen, unet_lora = [t for t in frozen if id(t) in unet], [p for p in lora if id(p) in unet]
    frozen = [t for t in frozen if id(t) not in unet]
    encoders = [t for name, module in components.text_encoders.items() if name not in trained_names
                for t in _tensors(module)]
    vae = list(_tensors(components.vae))
    cuda = MetaCuda(compute)
    cuda.follow_checkpoints(iter(components.denoisers().values()))
    computer = StepComputer(config, family, components, META, torch.Generator().manual_seed(0), cuda.autocast)

    with StorageTracker() as tracker, cuda:
        tracker.adopt(frozen, FROZEN)
        tracker.adopt([p for p in lora if id(p) not in unet], TRAINED)
        # 1. caching: the VAE alone on the GPU while it encodes latents (text encoders whose
        # outputs are cached wait on the CPU, as the U-Net does), then the text encoders
        tracker.adopt(vae + ([] if text_cached else encoders), RESIDENT)
        tracker.reset_peak()
        caching = 0
        if latents_cached:
            pixels = torch.empty((config.dataset.vae_batch_size, 3, height, width), device=META,
                                 dtype=placement.module_dtype(components.vae))
            with torch.no_grad():
                components.vae.encode(pixels).latent_dist.mean
            del pixels
            caching = tracker.peak
            tracker.release(vae)
        text = None
        if text_cached:
            tracker.adopt(encoders, RESIDENT)
            tracker.reset_peak()
            with torch.no_grad(), cuda.autocast():
                text = computer.text([CAPTION] * TEXT_CACHE_BATCH)
            text = _first_row(text)  # the conditioning is kept per caption, on the host
            caching = max(caching, tracker.peak)
            tracker.release(encoders)
            computer.text_cache = _MetaTextCache(text)
        # 2. training: the U-Net joins; the optimizer's state as after the first step; one step
        tracker.adopt(unet_frozen, FROZEN)
        tracker.adopt(unet_lora, TRAINED)
        _initialise_state(optimizer, lora)
        tracker.label(_state_tensors(optimizer), OPTIMIZER)
        tracker.reset_peak()
        _train_step(config, computer, optimizer, lora, tracker, cuda, _batch(config, components, batch_size,
                                                                          width, height, latents_cached))
        training = tracker.at_peak()
        training_peak = tracker.peak
        # 3. sampling: the VAE and text encoders borrowed back
        sampling = None
        if _draws_samples(config):
            tracker.adopt(vae + (encoders if text_cached else []), RESIDENT)
            tracker.reset_peak()
            _sampling_step(config, family, components, cuda)
            sampling = tracker.peak

    notes = [ATTENTION_NOTE[config.training.attention],
             "autocast emulated with CUDA's op lists (core.training.meta_kernels); frozen weights in "
             f"{str(weight_dtype).removeprefix('torch.')}, LoRA and optimizer state in fp32",
             "latents cached: the VAE leaves the GPU after caching" if latents_cached
             else "latents not cached: the VAE stays on the GPU and encodes every batch",
             "text-encoder outputs cached: the encoders leave the GPU after caching" if text_cached
             else "text encoders stay on the GPU (trained, or their outputs cannot be cached)"]
    fp8 = fp8_components(config.model, components.denoisers())
    if fp8:
        notes.append(f"fp8 base weights ({', '.join(fp8)}): frozen linear and convolution weights at 1 byte, "
                     "each cast up for its layer's call and counted as it runs")
    if sampling is not None:
        notes.append("sampling: one U-Net step with guidance and one VAE decode at the sample size (estimate)")
    peak = max(training_peak, caching, sampling or 0)
    return VramForecast(frozen_weights=training.get(FROZEN, 0), trained_weights=training.get(TRAINED, 0),
                        optimizer_state=training.get(OPTIMIZER, 0), gradients=training.get(GRADIENTS, 0),
                        activations=training.get(ACTIVATIONS, 0), resident_modules=training.get(RESIDENT, 0),
                        training_peak=training_peak, caching_peak=caching, sampling_peak=sampling, peak=peak,
                        driver=driver_bytes(peak), bucket=(width, height), batch_size=batch_size,
                        attention=str(config.training.attention), notes=tuple(notes))


def largest_bucket(buckets: Sequence[tuple[int, int]], default: tuple[int, int]) -> tuple[int, int]:
    """The bucket with the most pixels (activations grow with them); ``default`` when none."""
    return max(buckets, key=lambda b: (b[0] * b[1], b), default=tuple(default))  # type: ignore[return-value]


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _initialise_state(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    for param in params:
        param.grad = torch.zeros_like(param)
    if not _step(optimizer):
        _state_from_a_cpu_step(optimizer)
    optimizer.zero_grad(set_to_none=True)


def _step(optimizer: torch.optim.Optimizer) -> bool:
    """One optimizer step on the meta device; False for an optimizer that reads values in its
    step (Prodigy and D-Adaptation test ``p.any()`` / call ``.item()``), which cannot run there.
    Such a step's state is counted (see _state_from_a_cpu_step), its temporaries are not."""
    try:
        optimizer.step()
    except RuntimeError as error:
        if "meta" not in str(error):
            raise
        return False
    return True


def _state_from_a_cpu_step(optimizer: torch.optim.Optimizer) -> None:
    """The optimizer's state as its first step makes it, learnt from the same optimizer class
    and groups stepping zero-filled CPU copies of the parameters, then laid out on the meta
    device: each state tensor (but 0-dim counters) becomes a meta tensor of its shape and dtype
    (Prodigy keeps s and p0 for every slice_p-th element of each weight)."""
    # Ones, not zeros: Prodigy keeps its p0 copy only of weights that are not all zero, and
    # the meta device cannot say which are (LoRA's up weights start at zero); counting p0 for
    # every weight over-states its state by at most the up weights' size, never under-states it.
    groups = [{**group, "params": [torch.ones(p.shape, dtype=p.dtype) for p in group["params"]]}
              for group in optimizer.param_groups]
    twin = type(optimizer)(groups)
    for group in twin.param_groups:
        for copy in group["params"]:
            copy.grad = torch.zeros_like(copy)
    twin.step()
    for group, twin_group in zip(optimizer.param_groups, twin.param_groups):
        for param, copy in zip(group["params"], twin_group["params"]):
            optimizer.state[param] = {
                key: torch.empty(value.shape, dtype=value.dtype, device=META)
                if torch.is_tensor(value) and value.dim() > 0 else value
                for key, value in twin.state[copy].items()}


def _train_step(config: TrainConfig, computer: Any, optimizer: torch.optim.Optimizer,
                params: list[torch.nn.Parameter], tracker: Any, cuda: Any, batch: Any) -> None:
    """step.train_micro_batch's memory-moving part, for one process closing its window."""
    loss = computer.loss(batch)
    with cuda.autocast(cache_leaves=False):  # checkpointed blocks recompute under autocast
        (loss / config.training.gradient_accumulation_steps).backward()
    del loss
    tracker.label([p.grad for p in params if p.grad is not None], GRADIENTS)
    if config.training.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, config.training.max_grad_norm)
    _step(optimizer)
    tracker.label(_state_tensors(optimizer), OPTIMIZER)
    optimizer.zero_grad(set_to_none=True)


def _batch(config: TrainConfig, components: ModelComponents, size: int, width: int, height: int,
           latents_cached: bool) -> Any:
    from core.data.pipeline import Batch

    channels = components.vae.config.latent_channels
    latents = torch.empty((size, channels, height // 8, width // 8)) if latents_cached else None
    pixels = None if latents_cached else torch.empty((size, 3, height, width))
    conditioning = torch.tensor([[height, width, 0, 0, height, width]] * size, dtype=torch.float32)
    return Batch(bucket=(width, height), keys=[f"image{i}" for i in range(size)], captions=[CAPTION] * size,
                 loss_weights=torch.ones(size), pixels=pixels, latents=latents, flipped=[False] * size,
                 size_conditioning=conditioning)


def _first_row(text: Any) -> Any:
    from core.models.family import TextConditioning

    pooled = None if text.pooled is None else text.pooled[:1]
    return TextConditioning(text.states[:1], pooled)


class _MetaTextCache:
    """text_cache.TextStateCache.conditioning's result for any captions: one cached row's shape
    and dtype per caption, stacked onto the device (new storage, as the real one makes)."""

    def __init__(self, row: Any) -> None:
        self.row = row

    def conditioning(self, captions: list[str], device: torch.device) -> Any:
        from core.models.family import TextConditioning

        n = len(captions)
        states = torch.empty((n, *self.row.states.shape[1:]), dtype=self.row.states.dtype, device=device)
        pooled = None if self.row.pooled is None else torch.empty((n, *self.row.pooled.shape[1:]),
                                                                   dtype=self.row.pooled.dtype, device=device)
        return TextConditioning(states, pooled)


def _draws_samples(config: TrainConfig) -> bool:
    sampling = config.sampling
    has_prompts = any(line.strip() and not line.strip().startswith("#") for line in sampling.prompts.splitlines())
    return has_prompts and bool(sampling.every_n_steps or sampling.every_n_epochs or sampling.at_step_0)


def _sampling_step(config: TrainConfig, family: Family, components: ModelComponents, cuda: Any) -> None:
    sampling = config.sampling
    width, height = sampling.width, sampling.height
    channels = components.vae.config.latent_channels
    for module in components.denoisers().values():
        module.eval()
    with torch.no_grad(), cuda.autocast():
        text = family.encode_text(components, components.text_encoders, [CAPTION, ""], clip_skip=config.model.clip_skip,
                                  max_token_length=config.training.max_token_length, device=META)
        latents = torch.empty((2, channels, height // 8, width // 8), device=META, dtype=text.states.dtype)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * 2, dtype=torch.float32)
        inputs = family.unet_inputs(text, SimpleNamespace(size_conditioning=time_ids))
        components.unet(latents, torch.zeros(2, dtype=torch.long, device=META), **inputs)
        del latents, inputs, text
        decoded = torch.empty((1, channels, height // 8, width // 8), device=META,
                              dtype=placement.module_dtype(components.vae))
        components.vae.decode(decoded)
