"""Turning a failure into what a person can act on: a summary, advice with this run's
values, and the traceback behind it."""

from __future__ import annotations

import errno
import shutil
import traceback as tb
from dataclasses import dataclass
from pathlib import Path

from core.config.schema import LatentCache, MixedPrecision, TrainConfig


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float, images: tuple[str, ...] = (), in_a_row: int = 0) -> None:
        text = f"the loss became {value} at step {step}"
        if in_a_row:
            text += f": {in_a_row} bad steps in a row, the limit training.nonfinite_skip_limit"
        if images:
            text += f" (images: {', '.join(images)})"
        super().__init__(text)
        self.step = step
        self.value = value
        self.images = images
        self.in_a_row = in_a_row


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


def run_settings(config: TrainConfig) -> str:
    """The settings that decide memory use, as this run has them."""
    data, train = config.dataset, config.training
    return (f"batch size {train.batch_size}, resolution {data.resolution[0]}x{data.resolution[1]}, "
            f"gradient checkpointing {'on' if train.gradient_checkpointing else 'off'}, "
            f"latent cache '{data.latent_cache.value}', mixed precision '{train.mixed_precision.value}', "
            f"network.dim {config.network.dim}")


def out_of_memory_advice(config: TrainConfig) -> tuple[str, ...]:
    """What to change, most effective first, each with this run's value."""
    data, train, net = config.dataset, config.training, config.network
    advice = []
    if train.batch_size > 1:
        advice.append(f"lower training.batch_size from {train.batch_size} to {max(1, train.batch_size // 2)} "
                      f"(raise training.gradient_accumulation_steps from {train.gradient_accumulation_steps} "
                      f"to {train.gradient_accumulation_steps * 2} to keep the effective batch)")
    if not train.gradient_checkpointing:
        advice.append("turn on training.gradient_checkpointing (now off): much less memory, about 30% slower")
    if data.latent_cache is LatentCache.OFF:
        advice.append("set dataset.latent_cache from 'off' to 'memory' or 'disk', so the VAE is not run "
                      "every step")
    if train.mixed_precision is MixedPrecision.NO:
        advice.append("set training.mixed_precision from 'no' to 'bf16' (RTX 30xx and newer) or 'fp16'")
    if max(data.resolution) > 512:
        width, height = data.resolution
        advice.append(f"lower dataset.resolution from {width}x{height} to 512x512 (memory grows with the "
                      f"pixel count; the largest bucket is dataset.max_bucket_reso = {data.max_bucket_reso})")
    if net.train_text_encoder:
        advice.append("train the U-Net only (network.train_text_encoder, now on)")
    if net.dim > 32:
        advice.append(f"lower network.dim from {net.dim}")
    return tuple(advice) or ("this run already uses the memory-saving settings: close other programs that "
                             "use the GPU, or use a card with more memory",)


def nonfinite_advice(error: NonFiniteLoss, config: TrainConfig) -> tuple[str, ...]:
    train = config.training
    advice = [f"a learning rate that is too high: lower optimizer.learning_rate "
              f"(now {config.optimizer.learning_rate:g}) or add warmup"]
    if train.mixed_precision is MixedPrecision.FP16:
        advice.append("fp16 overflow: use bf16 instead of fp16 mixed precision if the GPU supports it")
    vae = f"model.vae = {config.model.vae}" if config.model.vae else "the base model's own VAE"
    advice.append(f"a broken or fp16-only VAE ({vae}) gives NaN latents: try another VAE, and clear the "
                  "latent cache if latents were cached with it")
    if error.images:
        advice.append(f"a damaged image: check {', '.join(error.images)}")
    if train.nonfinite_loss.value == "stop":
        advice.append("to leave out the odd bad step instead of stopping, set training.nonfinite_loss to 'skip'")
    return tuple(advice)


def _disk_summary(error: OSError) -> str:
    text = f"The disk is full: {error}."
    if error.filename:
        try:
            free = shutil.disk_usage(Path(error.filename).parent).free / (1024 * 1024)
            text += f" {free:.0f} MB are free on that drive."
        except OSError:
            pass
    return text


def diagnose(error: BaseException, config: TrainConfig) -> Diagnosis:
    from core.data.buckets import BucketError
    from core.data.scan import DatasetError
    from core.config.optimizers import OptimizerSetupError

    if is_out_of_memory(error):
        return Diagnosis("oom", f"Out of GPU memory with {run_settings(config)}.", out_of_memory_advice(config))
    if isinstance(error, NonFiniteLoss):
        return Diagnosis("nan", f"Training stopped: {error}. Likely causes: a learning rate that is too "
                                "high, or a broken or fp16 VAE giving NaN latents.", nonfinite_advice(error, config))
    if type(error).__name__ in ("ResumeRefused", "StateError"):
        return Diagnosis("resume", str(error), ("the run folder was left as it was",))
    if type(error).__name__ == "RunFolderLost":
        return Diagnosis("disk", f"{str(error)[:1].upper()}{str(error)[1:]}.",
                         ("keep run folders where sync tools and disk cleaners leave them alone "
                          "(output.output_dir)",))
    if type(error).__name__ == "RunFolderBusy":
        return Diagnosis("busy", str(error), ("one process trains a run folder at a time",))
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
    if type(error).__name__ == "MaskError":
        return Diagnosis("data", str(error), ("add the missing masks, or turn off dataset.masked_loss",))
    if type(error).__name__ == "ImageLoadError":
        return Diagnosis("data", str(error), ("replace or remove that image, then plan the dataset again",))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Diagnosis("disk", _disk_summary(error),
                         ("free space on the output drive or choose another output.output_dir",
                          "lower output.keep_last_n so fewer checkpoints are kept"))
    if isinstance(error, PermissionError):
        return Diagnosis("disk", f"No permission to write: {error}.", ("choose another output.output_dir",))
    return Diagnosis("error", f"{type(error).__name__}: {error}",
                     ("see the traceback and the run's log; report it if it persists",))


def format_traceback(error: BaseException) -> str:
    return "".join(tb.format_exception(type(error), error, error.__traceback__))
