"""Turning a failure into what a person can act on: a summary, advice with this run's
values, and the traceback behind it."""

from __future__ import annotations

import errno
import traceback as tb
from dataclasses import dataclass

from core.config import LatentCache, MixedPrecision, TrainConfig


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"the loss became {value} at step {step}")
        self.step = step
        self.value = value


class ConfigProblems(ValueError):
    """Validation found errors; ``problems`` are the validation.Problem objects."""

    def __init__(self, problems: list) -> None:  # noqa: ANN001
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Diagnosis:
    kind: str
    summary: str
    advice: tuple[str, ...]


def is_out_of_memory(error: BaseException) -> bool:
    name = type(error).__name__
    return name == "OutOfMemoryError" or (isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def out_of_memory_advice(config: TrainConfig) -> tuple[str, ...]:
    data, train, net = config.dataset, config.training, config.network
    advice = []
    if train.batch_size > 1:
        advice.append(f"lower training.batch_size from {train.batch_size} to {max(1, train.batch_size // 2)} "
                      f"(raise gradient accumulation to {train.gradient_accumulation_steps * 2} to keep the "
                      "effective batch)")
    if not train.gradient_checkpointing:
        advice.append("turn on training.gradient_checkpointing (much less memory, about 30% slower)")
    if data.latent_cache is LatentCache.OFF:
        advice.append("set dataset.latent_cache to 'memory' or 'disk' so the VAE is not run every step")
    if train.mixed_precision is MixedPrecision.NO:
        advice.append("set training.mixed_precision to 'bf16' (RTX 30xx and newer) or 'fp16'")
    if max(data.resolution) > 512:
        advice.append(f"lower dataset.resolution from {data.resolution[0]}x{data.resolution[1]} "
                      f"(memory grows with the pixel count)")
    if net.train_text_encoder:
        advice.append("train the U-Net only (network.train_text_encoder = false)")
    if net.dim > 32:
        advice.append(f"lower network.dim from {net.dim}")
    return tuple(advice) or ("close other programs that use the GPU, or use a card with more memory",)


def diagnose(error: BaseException, config: TrainConfig) -> Diagnosis:
    from core.buckets import BucketError
    from core.dataset import DatasetError
    from core.training.optim import OptimizerSetupError

    if is_out_of_memory(error):
        return Diagnosis("oom", "Out of GPU memory.", out_of_memory_advice(config))
    if isinstance(error, NonFiniteLoss):
        advice = [f"lower the learning rate (now {config.optimizer.learning_rate:g})"]
        if config.training.mixed_precision is MixedPrecision.FP16:
            advice.append("use bf16 instead of fp16 mixed precision if the GPU supports it")
        advice.append("check the base model and VAE: a broken or fp16-only VAE gives NaN latents")
        return Diagnosis("nan", f"Training stopped: {error}. The last good checkpoint is kept.", tuple(advice))
    if isinstance(error, ConfigProblems):
        return Diagnosis("config", "The configuration has errors.", tuple(str(p) for p in error.problems))
    if isinstance(error, (DatasetError, BucketError)):
        return Diagnosis("data", str(error), ("fix the dataset settings named above",))
    if isinstance(error, OptimizerSetupError):
        return Diagnosis("config", str(error), ("change the optimizer settings named above",))
    if type(error).__name__ == "ModelLoadError":
        return Diagnosis("model", str(error), ("choose another base model (model.base_model)",))
    if type(error).__name__ == "KohyaFormatError":
        return Diagnosis("config", f"network.init_weights: {error}",
                         ("set network.dim / network.alpha to the file's values, or choose another "
                          "starting LoRA",))
    if type(error).__name__ == "ImageLoadError":
        return Diagnosis("data", str(error), ("replace or remove that image, then plan the dataset again",))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Diagnosis("disk", f"The disk is full: {error}.",
                         ("free space on the output drive or choose another output.output_dir",
                          "lower output.keep_last_n so fewer checkpoints are kept"))
    if isinstance(error, PermissionError):
        return Diagnosis("disk", f"No permission to write: {error}.", ("choose another output.output_dir",))
    return Diagnosis("error", f"{type(error).__name__}: {error}",
                     ("see the traceback and the run's log; report it if it persists",))


def format_traceback(error: BaseException) -> str:
    return "".join(tb.format_exception(type(error), error, error.__traceback__))
