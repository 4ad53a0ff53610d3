"""The training configuration: one dataclass per parameter group.

Defaults follow sd-scripts (the engine that kohya_ss drives), so a config carried over
from it plans and trains the same; where kohya_ss's GUI differs, the help text says so.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from core.config.params import PathKind, param

DEMO_MODEL = "builtin:demo-model"


class ModelFamily(enum.StrEnum):
    AUTO = "auto"  # from the base model file or folder (core.models.family.family_for)
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


class LatentCache(enum.StrEnum):
    OFF = "off"
    MEMORY = "memory"
    DISK = "disk"


class TextEncoderCache(enum.StrEnum):
    OFF = "off"
    MEMORY = "memory"
    DISK = "disk"


class NetworkType(enum.StrEnum):
    LORA = "LoRA"
    LOCON = "LoCon"
    LOHA = "LoHa"
    LOKR = "LoKr"
    IA3 = "IA3"

    @property
    def is_lycoris(self) -> bool:
        """Saved in LyCORIS's layout (hada_*, lokr_*, IA3's weight) rather than Kohya's lora_down/up."""
        return self in (NetworkType.LOHA, NetworkType.LOKR, NetworkType.IA3)

    @property
    def has_conv(self) -> bool:
        """Adapts the ResNet, down- and upsampling convolutions too (conv_dim / conv_alpha)."""
        return self in (NetworkType.LOCON, NetworkType.LOHA, NetworkType.LOKR)


class OptimizerType(enum.StrEnum):
    ADAMW = "AdamW"
    ADAMW8BIT = "AdamW8bit"
    PRODIGY = "Prodigy"
    DADAPT_ADAM = "DAdaptAdam"
    LION = "Lion"
    ADAFACTOR = "Adafactor"

    @property
    def adapts_lr(self) -> bool:
        """True for optimisers that estimate their own step size (d), so lr ~ 1.0."""
        return self in (OptimizerType.PRODIGY, OptimizerType.DADAPT_ADAM)


class Scheduler(enum.StrEnum):
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    LINEAR = "linear"
    POLYNOMIAL = "polynomial"


class Duration(enum.StrEnum):
    EPOCHS = "epochs"
    STEPS = "steps"


class MixedPrecision(enum.StrEnum):
    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class SavePrecision(enum.StrEnum):
    FLOAT = "float"
    FP16 = "fp16"
    BF16 = "bf16"


class Attention(enum.StrEnum):
    SDPA = "sdpa"
    EAGER = "eager"


class NonFinitePolicy(enum.StrEnum):
    STOP = "stop"
    SKIP = "skip"


class Sampler(enum.StrEnum):
    DDIM = "ddim"
    EULER = "euler"
    EULER_A = "euler_a"
    DPMSOLVER_PP = "dpmsolver++"
    PNDM = "pndm"
    LMS = "lms"
    HEUN = "heun"


@dataclass
class ModelParams:
    base_model: str = param(
        "", label="Base model", path=PathKind.FILE_OR_DIR, kohya="pretrained_model_name_or_path",
        help="The Stable Diffusion checkpoint to train on: a .safetensors or .ckpt file, a "
             f"diffusers folder, or '{DEMO_MODEL}' for the tiny built-in demo model.")
    family: ModelFamily = param(
        ModelFamily.AUTO, label="Model family",
        help="Architecture of the base model: auto reads it from the model file or folder; "
             "sd1 (SD 1.x) and sdxl (SDXL) train, and are checked against the file.")
    v_parameterization: bool = param(
        False, label="V-parameterization", advanced=True, kohya="v_parameterization",
        help="Train with the v-prediction objective. Only for models trained that way.")
    clip_skip: int = param(
        1, label="CLIP skip", minimum=1, maximum=12, kohya="clip_skip",
        help="Use the output of the N-th last text-encoder layer (2 for most anime models).")
    vae: str = param(
        "", label="VAE override", path=PathKind.FILE_OR_DIR, advanced=True, kohya="vae",
        help="A separate VAE file or folder to encode images with; empty uses the model's own.")
    no_half_vae: bool = param(
        False, label="Keep the VAE in fp32", advanced=True, kohya="no_half_vae",
        help="Encode latents and decode samples with the VAE in fp32 instead of the training's "
             "half precision: for a VAE that makes NaN in fp16 (SDXL's original one does). "
             "Costs VRAM and time while caching and sampling; a CPU always uses fp32.")
    fp8_base: bool = param(
        False, label="fp8 base weights", kohya="fp8_base",
        help="Keep the frozen weights of the U-Net's and the text encoders' linear and convolution "
             "layers in 8-bit floating point (float8_e4m3fn), cast up to the training precision one "
             "layer at a time as it runs (sd-scripts' fp8_base): the U-Net needs about half the VRAM "
             "(SDXL: 5.1 -> 2.6 GB), at the cost of coarser base weights (3 mantissa bits). The LoRA "
             "trains in fp32 and its file is written as without. Needs mixed precision fp16 or bf16. "
             "On a CPU the weights are stored in fp8 too and computed in bf16 or fp32: it saves "
             "memory, not time.")
    fp8_base_unet: bool = param(
        False, label="fp8 for the U-Net only", advanced=True, kohya="fp8_base_unet",
        help="fp8 base weights for the U-Net alone: the text encoders keep the training precision "
             "(sd-scripts' fp8_base_unet). On its own or with 'fp8 base weights', it puts the U-Net "
             "in fp8 and never the text encoders.")


@dataclass
class SubsetParams:
    image_dir: str = param(
        "", label="Image folder", path=PathKind.DIR, kohya="image_dir",
        help="Folder of training images (and their caption files).")
    kohya_layout: bool = param(
        False, label="Kohya layout (N_name sub-folders)",
        help="The folder holds N_name sub-folders, as kohya_ss's training and regularisation "
             "folders do: each becomes a subset with N repeats and 'name' as class tokens, "
             "and the options below apply to all of them.")
    num_repeats: int = param(
        1, label="Repeats", minimum=1, maximum=10000, kohya="num_repeats",
        help="How many times each image is seen per epoch (in Kohya layout the folder "
             "names give the repeats instead).")
    caption_extension: str = param(
        ".txt", label="Caption extension", kohya="caption_extension",
        help="Caption file of img.png is img + this extension (kohya_ss uses .txt; "
             "sd-scripts' dataset config defaults to .caption).")
    class_tokens: str = param(
        "", label="Class tokens", kohya="class_tokens",
        help="Caption used for images that have no caption file (in Kohya layout the folder "
             "names give them instead).")
    is_reg: bool = param(
        False, label="Regularisation images", kohya="is_reg",
        help="These images keep the model's prior; their loss is weighted by the prior loss weight.")
    shuffle_caption: bool = param(
        False, label="Shuffle caption", kohya="shuffle_caption",
        help="Shuffle the comma-separated tags of each caption every time it is used.")
    keep_tokens: int = param(
        0, label="Keep tokens", minimum=0, maximum=255, kohya="keep_tokens",
        help="The first N tags stay in place when captions are shuffled.")
    caption_dropout_rate: float = param(
        0.0, label="Caption dropout", minimum=0.0, maximum=1.0, advanced=True,
        kohya="caption_dropout_rate", help="Fraction of samples trained with an empty caption.")
    caption_tag_dropout_rate: float = param(
        0.0, label="Tag dropout", minimum=0.0, maximum=1.0, advanced=True,
        kohya="caption_tag_dropout_rate", help="Probability of dropping each single tag.")
    caption_prefix: str = param(
        "", label="Caption prefix", advanced=True, kohya="caption_prefix",
        help="Text put before every caption.")
    caption_suffix: str = param(
        "", label="Caption suffix", advanced=True, kohya="caption_suffix",
        help="Text put after every caption.")
    flip_aug: bool = param(
        False, label="Flip augmentation", kohya="flip_aug",
        help="Randomly mirror images left-right. Avoid for asymmetric subjects.")
    random_crop: bool = param(
        False, label="Random crop", advanced=True, kohya="random_crop",
        help="Crop the overflow at a random offset instead of the centre. "
             "Cannot be combined with a latent cache.")
    mask_dir: str = param(
        "", label="Mask folder", path=PathKind.DIR, advanced=True, kohya="conditioning_data_dir",
        help="With masked loss: a folder of loss masks, one per image with the image's file "
             "name stem and size (red channel or grey, white = trained, black = ignored).")
    alpha_mask: bool = param(
        False, label="Alpha channel as mask", advanced=True, kohya="alpha_mask",
        help="Weight the loss by each image's transparency (opaque = trained); images without "
             "an alpha channel are trained everywhere.")


@dataclass
class DatasetParams:
    subsets: list[SubsetParams] = param(
        label="Image folders", default_factory=list,
        help="The image folders to train on, each with its own repeats and caption options. "
             "A folder in Kohya layout (kohya_ss's training or regularisation folder) "
             "expands into one subset per N_name sub-folder.")
    resolution: tuple[int, int] = param(
        (512, 512), label="Resolution", unit="px", minimum=64, maximum=8192, kohya="resolution",
        help="Training resolution as width, height. Buckets keep about this many pixels.")
    enable_bucket: bool = param(
        True, label="Aspect-ratio buckets", kohya="enable_bucket",
        help="Group images of similar aspect ratio instead of cropping all to the resolution.")
    min_bucket_reso: int = param(
        256, label="Min bucket resolution", unit="px", minimum=64, maximum=8192,
        advanced=True, kohya="min_bucket_reso", help="Smallest bucket side.")
    max_bucket_reso: int = param(
        1024, label="Max bucket resolution", unit="px", minimum=64, maximum=8192,
        advanced=True, kohya="max_bucket_reso",
        help="Largest bucket side (sd-scripts' default 1024; kohya_ss's GUI uses 2048).")
    bucket_reso_steps: int = param(
        64, label="Bucket step", unit="px", minimum=8, maximum=512, advanced=True,
        kohya="bucket_reso_steps", help="Bucket sides are multiples of this.")
    bucket_no_upscale: bool = param(
        False, label="No upscaling", kohya="bucket_no_upscale",
        help="Never enlarge images: small images get small buckets of their own "
             "(kohya_ss's GUI turns this on by default).")
    prior_loss_weight: float = param(
        1.0, label="Prior loss weight", minimum=0.0, maximum=100.0, advanced=True,
        kohya="prior_loss_weight", help="Loss weight of regularisation images.")
    masked_loss: bool = param(
        False, label="Masked loss", advanced=True, kohya="masked_loss",
        help="Weight each image's loss per pixel by its mask (each subset's mask folder, or "
             "its alpha channel): areas outside the mask teach nothing.")
    latent_cache: LatentCache = param(
        LatentCache.OFF, label="Latent cache",
        help="Encode each image once with the VAE, in memory or on disk, instead of every step.")
    text_encoder_cache: TextEncoderCache = param(
        TextEncoderCache.MEMORY, label="Text-encoder output cache", advanced=True,
        help="Encode each caption once with the text encoders instead of every step (sd-scripts' "
             "cache_text_encoder_outputs), which lets SDXL leave its encoders off the GPU. Only "
             "possible when no text encoder is trained and captions never change (no shuffle or "
             "dropout): 'memory' caches whenever that holds; 'disk' keeps the outputs beside the "
             "images for later runs and requires it; 'off' encodes every step.")
    vae_batch_size: int = param(
        1, label="VAE batch size", minimum=1, maximum=256, advanced=True, kohya="vae_batch_size",
        help="Images the VAE encodes at once while caching latents (sd-scripts' default 1). "
             "Larger is faster but needs more VRAM: about 0.6 GiB per 512 px image in fp32, "
             "half that in half precision. Independent of the training batch size.")
    max_data_loader_n_workers: int = param(
        2, label="Data loader workers", minimum=0, maximum=64, advanced=True,
        kohya="max_data_loader_n_workers",
        help="Processes that decode and resize images while the GPU trains; 0 loads them in "
             "the training process. Unused with a latent cache in memory (nothing to decode).")
    validation_split: float = param(
        0.0, label="Validation split", minimum=0.0, maximum=0.9, step=0.05, kohya="validation_split",
        help="Fraction of each training folder's images held out of training to compute a "
             "validation loss (as sd-scripts: chosen per folder by the validation seed). 0: none.")
    validation_dir: str = param(
        "", label="Validation folder", path=PathKind.DIR, advanced=True,
        help="A folder of images and captions used for the validation loss instead of a split "
             "(never trained on). Empty: use the validation split.")
    validation_seed: int = param(
        -1, label="Validation seed", minimum=-1, maximum=2**32 - 1, advanced=True,
        kohya="validation_seed",
        help="Seed that chooses the held-out images and the validation noise; -1: the training "
             "seed (as sd-scripts when none is given).")


@dataclass
class NetworkParams:
    type: NetworkType = param(
        NetworkType.LORA, label="Network type",
        help="LoRA trains the attention and feed-forward layers; LoCon adds the convolutions. The "
             "LyCORIS types (saved as kohya_ss saves them, loaded by ComfyUI, AUTOMATIC1111/Forge and "
             "sd-scripts): LoHa (a Hadamard product of two low-rank pairs, about twice LoRA's "
             "weights per dim) and LoKr (a Kronecker product, very small files) adapt the same layers "
             "as LoCon; IA3 only scales the attention keys, values and feed-forward outputs "
             "(tiny files; wants a high learning rate, ~5e-3).")
    dim: int = param(
        8, label="Network dim (rank)", minimum=1, maximum=1024, kohya="network_dim",
        help="Rank of each LoRA module. Higher learns more detail and makes larger files.")
    alpha: float = param(
        1.0, label="Network alpha", minimum=0.0, maximum=1024.0, kohya="network_alpha",
        help="Scales the LoRA output by alpha / dim (kohya_ss default 1).")
    conv_dim: int = param(
        1, label="Conv dim", minimum=1, maximum=1024, kohya="conv_dim",
        help="Rank of the 3x3 convolution modules (LoCon, LoHa and LoKr).")
    conv_alpha: float = param(
        1.0, label="Conv alpha", minimum=0.0, maximum=1024.0, kohya="conv_alpha",
        help="Alpha of the 3x3 convolution modules (LoCon, LoHa and LoKr).")
    dora_wd: bool = param(
        False, label="DoRA (weight decomposition)", advanced=True,
        help="LyCORIS's dora_wd: train each adapted layer's weight as a direction plus a magnitude "
             "per output channel (saved as dora_scale), which often learns closer to full fine-tuning. "
             "For LoRA, LoCon, LoHa and LoKr; slower per step.")
    lokr_factor: int = param(
        -1, label="LoKr factor", minimum=-1, maximum=1024, advanced=True,
        help="LoKr splits each dimension into two factors, the smaller one at most this (-1: as "
             "square as possible). Smaller factors make smaller files.")
    lokr_full_matrix: bool = param(
        False, label="LoKr full matrix", advanced=True,
        help="LoKr: keep both Kronecker factors as full matrices instead of low-rank pairs (LyCORIS's "
             "full_matrix; the same as a dim of 10000). The dim then plays no part and the scale is 1.")
    lokr_decompose_both: bool = param(
        False, label="LoKr decompose both", advanced=True,
        help="LoKr: make the smaller Kronecker factor low-rank too (LyCORIS's decompose_both).")
    dropout: float = param(
        0.0, label="Dropout", minimum=0.0, maximum=1.0, advanced=True, kohya="network_dropout",
        help="Dropout on the LoRA modules' hidden activations.")
    rank_dropout: float = param(
        0.0, label="Rank dropout", minimum=0.0, maximum=0.99, advanced=True, kohya="rank_dropout",
        help="LoRA and LoCon: each step, zero this fraction of each module's ranks at random (per "
             "sample) and scale the rest up to make up for them; training only, never when sampling.")
    module_dropout: float = param(
        0.0, label="Module dropout", minimum=0.0, maximum=1.0, advanced=True, kohya="module_dropout",
        help="LoRA and LoCon: each step, skip each LoRA module with this probability; training "
             "only, never when sampling.")
    down_lr_weight: str = param(
        "", label="Down-block LR weights", advanced=True, kohya="down_lr_weight",
        help="LoRA and LoCon: multiply the U-Net learning rate of each down block by these weights, "
             "shallow to deep: 12 comma-separated numbers for SD 1.x (the first is unused), 9 for "
             "SDXL (fewer are filled with 1), or a preset: cosine, sine, linear, reverse_linear, zeros "
             "(optionally +base, e.g. sine+0.5). A block with weight 0 gets no LoRA at all. Empty: 1.")
    mid_lr_weight: str = param(
        "", label="Mid-block LR weight", advanced=True, kohya="mid_lr_weight",
        help="LoRA and LoCon: multiply the U-Net learning rate of the mid block by this (SDXL: 3 "
             "comma-separated numbers, one per part of its middle block). Empty: 1.")
    up_lr_weight: str = param(
        "", label="Up-block LR weights", advanced=True, kohya="up_lr_weight",
        help="LoRA and LoCon: as the down-block weights, for the up blocks, deep to shallow (12 for "
             "SD 1.x, 9 for SDXL, or a preset).")
    block_lr_zero_threshold: float = param(
        0.0, label="Block LR zero threshold", minimum=0.0, maximum=10.0, advanced=True,
        kohya="block_lr_zero_threshold",
        help="Block LR weights at or below this count as 0: those blocks get no LoRA module.")
    block_dims: str = param(
        "", label="Block dims", advanced=True, kohya="block_dims",
        help="LoRA and LoCon: the rank of each U-Net block's modules, comma-separated: 25 numbers for "
             "SD 1.x (12 down, mid, 12 up), 23 for SDXL (embeddings, 9 input, 3 middle, 9 output, "
             "out); 0 leaves a block without LoRA. Empty: the network dim everywhere.")
    block_alphas: str = param(
        "", label="Block alphas", advanced=True, kohya="block_alphas",
        help="LoRA and LoCon: the alpha of each U-Net block's modules (as many as block dims). "
             "Empty: the network alpha everywhere.")
    conv_block_dims: str = param(
        "", label="Conv block dims", advanced=True, kohya="conv_block_dims",
        help="LoCon: the rank of each U-Net block's 3x3 convolutions (as many as block dims). "
             "Empty: the conv dim everywhere.")
    conv_block_alphas: str = param(
        "", label="Conv block alphas", advanced=True, kohya="conv_block_alphas",
        help="LoCon: the alpha of each U-Net block's 3x3 convolutions. Empty: the conv alpha everywhere.")
    train_unet: bool = param(True, label="Train U-Net", help="Train LoRA modules in the U-Net.")
    train_text_encoder: bool = param(
        True, label="Train text encoder",
        help="Train LoRA modules in the CLIP text encoder (SDXL: in both of its encoders, unless "
             "one is switched off below).")
    train_text_encoder_1: bool = param(
        True, label="Train text encoder 1 (CLIP ViT-L)", advanced=True, families=(ModelFamily.SDXL,),
        help="SDXL: with 'Train text encoder' on, put LoRA modules on the first encoder "
             "(lora_te1_*); off trains the second one only.")
    train_text_encoder_2: bool = param(
        True, label="Train text encoder 2 (OpenCLIP ViT-bigG)", advanced=True, families=(ModelFamily.SDXL,),
        help="SDXL: with 'Train text encoder' on, put LoRA modules on the second encoder "
             "(lora_te2_*); off trains the first one only.")
    init_weights: str = param(
        "", label="Start from LoRA", path=PathKind.FILE, advanced=True, kohya="network_weights",
        help="An existing Kohya-format LoRA file to continue training from.")
    scale_weight_norms: float = param(
        0.0, label="Scale weight norms", minimum=0.0, maximum=100.0, advanced=True,
        kohya="scale_weight_norms",
        help="Max-norm regularisation: after each optimizer step, any LoRA module whose weight "
             "change (up x down x alpha/dim) has a norm above this is scaled down to it; 1 is "
             "usual; 0 turns it off. The number of modules scaled is logged.")


@dataclass
class OptimizerParams:
    type: OptimizerType = param(
        OptimizerType.ADAMW8BIT, label="Optimizer", kohya="optimizer_type",
        help="AdamW8bit keeps the optimizer state in 8 bits (bitsandbytes), saving memory. Prodigy and "
             "DAdaptAdam find their own step size: set the learning rate to 1.0 for them.")
    learning_rate: float = param(
        1e-4, label="Learning rate", minimum=0.0, maximum=10.0, kohya="learning_rate",
        help="Base learning rate; ~1.0 for Prodigy and DAdaptAdam.")
    unet_lr: float | None = param(
        None, label="U-Net LR", minimum=0.0, maximum=10.0, kohya="unet_lr",
        help="Learning rate of the U-Net modules; empty means the base learning rate.")
    text_encoder_lr: float | None = param(
        None, label="Text-encoder LR", minimum=0.0, maximum=10.0, kohya="text_encoder_lr",
        help="Learning rate of the text-encoder modules; empty means the base learning rate. "
             "SDXL: of the first encoder, and of the second unless it has its own.")
    text_encoder_2_lr: float | None = param(
        None, label="Text-encoder 2 LR", minimum=0.0, maximum=10.0, families=(ModelFamily.SDXL,),
        help="SDXL: learning rate of the second text encoder's modules (sd-scripts' "
             "learning_rate_te2); empty means the text-encoder LR.")
    weight_decay: float = param(
        0.01, label="Weight decay", minimum=0.0, maximum=10.0, advanced=True,
        help="Decoupled weight decay (AdamW, Lion, Prodigy with decouple).")
    betas: tuple[float, float] = param(
        (0.9, 0.999), label="Betas", minimum=0.0, maximum=0.99999, advanced=True,
        help="Adam's moment decay rates (Lion and Prodigy use them too).")
    eps: float = param(
        1e-8, label="Epsilon", minimum=0.0, maximum=1.0, advanced=True,
        help="Added to the denominator for numerical stability.")
    d_coef: float = param(
        1.0, label="d coefficient", minimum=0.0, maximum=100.0, advanced=True,
        help="Prodigy / D-Adaptation: scales the estimated step size d.")
    growth_rate: float = param(
        math.inf, label="Growth rate (GR)", minimum=1.0, advanced=True,
        help="Prodigy / D-Adaptation: the most d may grow per step (inf: unbounded).")
    d0: float = param(
        1e-6, label="Initial d (d0)", minimum=1e-12, maximum=1.0, advanced=True,
        help="Prodigy / D-Adaptation: the starting estimate of the step size.")
    safeguard_warmup: bool = param(
        False, label="Safeguard warmup", advanced=True,
        help="Prodigy: avoid d growing too fast during learning-rate warmup.")
    use_bias_correction: bool = param(
        False, label="Bias correction", advanced=True,
        help="Prodigy: Adam-style bias correction of the step size.")
    decouple: bool = param(
        True, label="Decouple weight decay", advanced=True,
        help="Prodigy / D-Adaptation: AdamW-style decoupled weight decay.")
    extra_args: dict[str, bool | int | float | str] = param(
        label="Extra optimizer arguments", default_factory=dict, advanced=True,
        help="Further keyword arguments passed to the optimizer, as name = value.")


@dataclass
class ScheduleParams:
    scheduler: Scheduler = param(
        Scheduler.COSINE, label="LR scheduler", kohya="lr_scheduler",
        help="How the learning rate changes over training.")
    warmup_steps: int = param(
        0, label="Warmup steps", minimum=0, maximum=10_000_000, kohya="lr_warmup_steps",
        help="Steps over which the learning rate rises from 0. Set this or the warmup ratio.")
    warmup_ratio: float = param(
        0.0, label="Warmup ratio", minimum=0.0, maximum=1.0, advanced=True,
        help="Warmup as a fraction of all training steps (kohya_ss's 'LR warmup %' / 100).")
    num_cycles: int = param(
        1, label="Cycles", minimum=1, maximum=1000, advanced=True,
        kohya="lr_scheduler_num_cycles", help="Restarts of cosine_with_restarts.")
    power: float = param(
        1.0, label="Power", minimum=0.0, maximum=100.0, advanced=True,
        kohya="lr_scheduler_power", help="Exponent of the polynomial scheduler.")


def trained_text_encoders(network: NetworkParams, names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of a family's text encoders (``names``, in Kohya's order) get LoRA: all of them
    with network.train_text_encoder, less the first or second where switched off."""
    if not network.train_text_encoder:
        return ()
    switches = (network.train_text_encoder_1, network.train_text_encoder_2)
    if len(names) != len(switches):  # one encoder (SD 1.x): the fine choice does not apply
        return names
    return tuple(name for name, on in zip(names, switches) if on)


def text_encoder_lrs(opt: OptimizerParams, names: tuple[str, ...]) -> dict[str, float]:
    """Each text encoder's learning rate: text_encoder_lr, else the base learning rate; the
    second of two encoders takes text_encoder_2_lr when it is set."""
    rate = opt.learning_rate if opt.text_encoder_lr is None else opt.text_encoder_lr
    rates = dict.fromkeys(names, rate)
    if len(names) == 2 and opt.text_encoder_2_lr is not None:
        rates[names[1]] = opt.text_encoder_2_lr
    return rates


# sd-scripts' choices for --max_token_length: one, two or three chunks of 75 caption tokens.
MAX_TOKEN_LENGTHS = (75, 150, 225)


@dataclass
class TrainingParams:
    batch_size: int = param(
        1, label="Batch size", minimum=1, maximum=1024, kohya="train_batch_size",
        help="Images per step and device. Batches never mix buckets, so a small bucket "
             "gives a smaller batch.")
    duration: Duration = param(
        Duration.STEPS, label="Train for",
        help="Whether the epoch count or the step count decides when training ends; the "
             "other number is computed from the bucket plan and shown. sd-scripts trains "
             "1600 steps unless given epochs, hence the default.")
    max_train_epochs: int = param(
        10, label="Epochs", minimum=1, maximum=100_000, kohya="max_train_epochs",
        help="Passes over the dataset (used when 'Train for' is epochs).")
    max_train_steps: int = param(
        1600, label="Max steps", minimum=1, maximum=100_000_000, kohya="max_train_steps",
        help="Optimizer steps (used when 'Train for' is steps); training may stop mid-epoch.")
    validate_every_n_steps: int = param(
        0, label="Validate every N steps", minimum=0, maximum=100_000_000, advanced=True,
        kohya="validate_every_n_steps",
        help="Compute the validation loss every N steps (0: only at epoch ends). Needs a "
             "validation split or folder.")
    validate_every_n_epochs: int = param(
        1, label="Validate every N epochs", minimum=0, maximum=100_000, advanced=True,
        kohya="validate_every_n_epochs",
        help="Compute the validation loss at the end of every N-th epoch and of the last one "
             "(0: never at epoch ends).")
    max_validation_steps: int = param(
        0, label="Max validation batches", minimum=0, maximum=100_000, advanced=True,
        kohya="max_validation_steps",
        help="Validate on at most this many batches of the validation set (0: all of it).")
    gradient_accumulation_steps: int = param(
        1, label="Gradient accumulation", minimum=1, maximum=1024,
        kohya="gradient_accumulation_steps",
        help="Batches accumulated per optimizer step: a larger effective batch in the same memory.")
    mixed_precision: MixedPrecision = param(
        MixedPrecision.FP16, label="Mixed precision", kohya="mixed_precision",
        help="bf16 on RTX 30xx and newer; fp16 otherwise; 'no' for full fp32 (and on a CPU).")
    gradient_checkpointing: bool = param(
        False, label="Gradient checkpointing", kohya="gradient_checkpointing",
        help="Recompute activations in the backward pass: much less VRAM, about 30% slower.")
    seed: int = param(
        42, label="Seed", minimum=0, maximum=2**32 - 1, kohya="seed",
        help="Seed for noise, shuffling and augmentation: the same seed repeats a run.")
    noise_offset: float = param(
        0.0, label="Noise offset", minimum=0.0, maximum=1.0, advanced=True, kohya="noise_offset",
        help="Adds a per-channel offset to the noise; helps very dark or bright images (~0.05).")
    noise_offset_random_strength: bool = param(
        False, label="Random noise-offset strength", advanced=True, kohya="noise_offset_random_strength",
        help="Draw the noise offset each step uniformly between 0 and the value above.")
    min_snr_gamma: float = param(
        0.0, label="Min-SNR gamma", minimum=0.0, maximum=100.0, advanced=True,
        kohya="min_snr_gamma", help="Min-SNR loss weighting; 5 is common, 0 turns it off.")
    adaptive_noise_scale: float = param(
        0.0, label="Adaptive noise scale", minimum=-1.0, maximum=1.0, advanced=True,
        kohya="adaptive_noise_scale",
        help="Adds this times each channel's mean latent value (absolute) to the noise offset, "
             "so brighter or darker images get more; ~1/10 of the noise offset. Needs a noise "
             "offset; 0 turns it off.")
    multires_noise_iterations: int = param(
        0, label="Multires noise iterations", minimum=0, maximum=64, advanced=True,
        kohya="multires_noise_iterations",
        help="Pyramid noise: adds noise upscaled from ever smaller sizes (6-10 is usual), which "
             "strengthens low frequencies like a noise offset does; 0 turns it off. Not together "
             "with a noise offset.")
    multires_noise_discount: float = param(
        0.3, label="Multires noise discount", minimum=0.0, maximum=1.0, advanced=True,
        kohya="multires_noise_discount",
        help="Weight of each smaller level of multires noise relative to the one above it "
             "(0.1-0.3 is usual; higher gives more low-frequency noise).")
    ip_noise_gamma: float = param(
        0.0, label="Input perturbation noise", minimum=0.0, maximum=1.0, advanced=True,
        kohya="ip_noise_gamma",
        help="Perturbs the noise mixed into the U-Net's input (not the target it learns) by "
             "this much extra noise; ~0.1 is recommended; 0 turns it off.")
    ip_noise_gamma_random_strength: bool = param(
        False, label="Random input-perturbation strength", advanced=True,
        kohya="ip_noise_gamma_random_strength",
        help="Draw the input perturbation's strength each step uniformly between 0 and the "
             "value above.")
    debiased_estimation_loss: bool = param(
        False, label="Debiased estimation loss", advanced=True, kohya="debiased_estimation_loss",
        help="Weights each sample's loss by 1/sqrt(SNR) of its timestep (1/(SNR+1) with "
             "v-prediction), as sd-scripts does, so easy, barely noised steps count less.")
    max_grad_norm: float = param(
        1.0, label="Max grad norm", minimum=0.0, maximum=1000.0, advanced=True,
        kohya="max_grad_norm", help="Clip the gradient norm to this; 0 turns clipping off.")
    max_token_length: int = param(
        75, label="Max token length", unit="tokens", minimum=75, maximum=225, step=75, advanced=True,
        kohya="max_token_length",
        help="Caption tokens that reach the text encoder: 75, 150 or 225. Past 75 a caption is "
             "encoded in chunks of 75, as sd-scripts does; the tokens beyond the limit never train.")
    attention: Attention = param(
        Attention.SDPA, label="Attention", advanced=True,
        help="sdpa: PyTorch's fused scaled-dot-product attention; eager: the plain maths.")
    nonfinite_loss: NonFinitePolicy = param(
        NonFinitePolicy.STOP, label="On NaN/inf loss", advanced=True,
        help="stop: end the run at the first NaN or infinite loss, keeping the last checkpoint; "
             "skip: leave that step out (no weight or optimizer update) and go on, until too "
             "many bad steps come in a row.")
    nonfinite_skip_limit: int = param(
        10, label="Bad steps in a row", minimum=1, maximum=10_000, advanced=True,
        help="With 'skip': this many consecutive NaN/inf steps stop the run anyway (the "
             "weights themselves have probably gone bad).")


@dataclass
class OutputParams:
    output_dir: str = param(
        "", label="Output folder", path=PathKind.DIR, kohya="output_dir",
        help="Where run folders are written; empty uses LoRA Kiln's runs folder.")
    output_name: str = param(
        "lora", label="Output name", kohya="output_name",
        help="File name of the LoRA, without extension.")
    save_every_n_epochs: int = param(
        0, label="Save every N epochs", minimum=0, maximum=100_000, kohya="save_every_n_epochs",
        help="Write a checkpoint every N epochs; 0 saves only at the end.")
    save_every_n_steps: int = param(
        0, label="Save every N steps", minimum=0, maximum=100_000_000, advanced=True,
        kohya="save_every_n_steps", help="Write a checkpoint every N steps; 0 turns it off.")
    save_precision: SavePrecision = param(
        SavePrecision.FP16, label="Save precision", kohya="save_precision",
        help="Precision of the tensors in the saved LoRA file.")
    keep_last_n: int = param(
        0, label="Keep last N checkpoints", minimum=0, maximum=10_000, advanced=True,
        help="Delete older intermediate checkpoints; 0 keeps them all.")
    save_state: bool = param(
        False, label="Save training state", advanced=True, kohya="save_state",
        help="Also save optimizer, scheduler and RNG state with each checkpoint, to resume later.")
    comment: str = param(
        "", label="Comment", advanced=True, kohya="training_comment",
        help="Free text stored in the LoRA file's metadata (ss_training_comment).")


@dataclass
class SamplingParams:
    prompts: str = param(
        "", label="Sample prompts", multiline=True,
        help="One prompt per line, Kohya syntax: options after ' --', e.g. "
             "'a cat --w 512 --h 768 --s 30 --l 7.5 --d 1 --n blurry'. Lines starting with # are ignored.")
    every_n_steps: int = param(
        0, label="Sample every N steps", minimum=0, maximum=100_000_000,
        kohya="sample_every_n_steps", help="0 turns step sampling off.")
    every_n_epochs: int = param(
        0, label="Sample every N epochs", minimum=0, maximum=100_000,
        kohya="sample_every_n_epochs", help="0 turns epoch sampling off.")
    at_step_0: bool = param(
        False, label="Sample before training", help="Also sample at step 0, before any training.")
    sampler: Sampler = param(
        Sampler.DDIM, label="Sampler", kohya="sample_sampler",
        help="Sampler used when a prompt gives no --ss.")
    steps: int = param(
        30, label="Sampling steps", minimum=1, maximum=1000,
        help="Denoising steps when a prompt gives no --s.")
    cfg_scale: float = param(
        7.5, label="CFG scale", minimum=0.0, maximum=50.0,
        help="Classifier-free guidance when a prompt gives no --l.")
    seed: int = param(
        42, label="Sampling seed", minimum=0, maximum=2**32 - 1,
        help="Seed when a prompt gives no --d, so every sample of a run is comparable.")
    width: int = param(
        512, label="Sample width", unit="px", minimum=64, maximum=4096, advanced=True,
        help="Width when a prompt gives no --w.")
    height: int = param(
        512, label="Sample height", unit="px", minimum=64, maximum=4096, advanced=True,
        help="Height when a prompt gives no --h.")


@dataclass
class LoggingParams:
    tensorboard: bool = param(
        False, label="TensorBoard logs",
        help="Also write TensorBoard event files with Kohya's tag names into the run folder.")


@dataclass
class TrainConfig:
    model: ModelParams = field(default_factory=ModelParams)
    dataset: DatasetParams = field(default_factory=DatasetParams)
    network: NetworkParams = field(default_factory=NetworkParams)
    optimizer: OptimizerParams = field(default_factory=OptimizerParams)
    schedule: ScheduleParams = field(default_factory=ScheduleParams)
    training: TrainingParams = field(default_factory=TrainingParams)
    output: OutputParams = field(default_factory=OutputParams)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    logging: LoggingParams = field(default_factory=LoggingParams)


GROUPS: dict[str, type] = {
    "model": ModelParams,
    "dataset": DatasetParams,
    "network": NetworkParams,
    "optimizer": OptimizerParams,
    "schedule": ScheduleParams,
    "training": TrainingParams,
    "output": OutputParams,
    "sampling": SamplingParams,
    "logging": LoggingParams,
}

GROUP_TITLES: dict[str, str] = {
    "model": "Model", "dataset": "Dataset", "network": "Network", "optimizer": "Optimizer",
    "schedule": "LR schedule", "training": "Training", "output": "Output",
    "sampling": "Sampling", "logging": "Logging",
}
