"""``lorakiln --self-test``: prove that an installation works, without opening a window.

It does what a first training does, at toy size: finds the shipped resources, loads the
built-in demo preset and model, plans the demo dataset, trains a few steps, samples one
small image and writes a LoRA into a temporary folder, then reads the file back. One line
says how it went; the exit status is 0 only when everything worked. CI runs it on the
built app; users run it to check an install, a frozen build included.

A windowed build on Windows has no console, so the same line (with the details of a
failure) is also written to ``self-test.txt`` in the per-user log folder, and the bundle
has a console sibling, ``lorakiln-cli``, that prints it (docs/packaging.md).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core import __version__
from core.system.atomic import write_text_atomic
from core.system.paths import log_dir

SELF_TEST_STEPS = 4
RESULT_FILE_NAME = "self-test.txt"
# One tiny sample at the last step: it runs the diffusers pipeline code a frozen build
# must have collected, at a cost of well under a second.
SAMPLE_PROMPT = "kilnstyle, vase, blue glaze --w 64 --h 64 --s 2 --d 7"


class SelfTestFailure(Exception):
    """A step of the self-test failed; the message says which step and why."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class SelfTestResult:
    ok: bool
    line: str  # the one-line result printed on stdout
    details: str = ""  # on failure: advice and traceback, printed on stderr


def how_installed() -> str:
    if getattr(sys, "frozen", False):
        return "frozen build"
    source_tree = Path(__file__).resolve().parents[2]  # core/training/ -> the checkout
    return "from source" if (source_tree / "pyproject.toml").is_file() else "installed package"


def temp_root() -> Path:
    """The folder the self-test's temporary folder goes in.

    A temporary-folder variable the user set is honoured as given: Python's own lookup
    would quietly fall back to another folder when it is unusable, and then the self-test
    would vouch for a set-up that real use does not have.
    """
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(name)
        if value:
            return Path(value)
    return Path(tempfile.gettempdir())


def result_file() -> Path:
    return log_dir() / RESULT_FILE_NAME


def self_test_config(output_dir: Path, steps: int = SELF_TEST_STEPS):  # noqa: ANN201 - LoadedPreset
    """The built-in demo preset, cut down to a few steps that write into ``output_dir``."""
    from core.config.schema import Duration
    from core.config.presets import find_preset, load_preset

    loaded = load_preset(find_preset("demo"))
    config = loaded.config
    config.training.duration = Duration.STEPS
    config.training.max_train_steps = steps
    config.schedule.warmup_steps = min(config.schedule.warmup_steps, steps - 1)
    config.output.output_dir = str(output_dir)
    config.output.output_name = "self-test"
    config.output.save_every_n_epochs = 0
    config.output.save_every_n_steps = 0
    config.sampling.prompts = SAMPLE_PROMPT
    config.sampling.every_n_epochs = 0
    config.sampling.every_n_steps = steps
    config.sampling.at_step_0 = False
    config.logging.tensorboard = False
    return loaded


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Turns any error inside into a SelfTestFailure that names the step it happened in."""
    try:
        yield
    except SelfTestFailure:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes the one-line reason
        raise SelfTestFailure(f"{what}: {type(error).__name__}: {error}") from error


def check_lora_file(path: Path, expected_dim: int) -> int:
    """Read a trained LoRA back; returns its tensor count or raises SelfTestFailure."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
        if not keys:
            raise SelfTestFailure(f"the LoRA file {path} holds no tensors")
        if metadata.get("ss_network_dim") != str(expected_dim):
            raise SelfTestFailure(f"the LoRA file {path} says network dim {metadata.get('ss_network_dim')!r}, "
                                  f"expected {expected_dim}")
        trained = False
        for key in keys:
            tensor = handle.get_tensor(key).float()
            if not bool(tensor.isfinite().all()):
                raise SelfTestFailure(f"the LoRA file {path} has non-finite values in {key}")
            # lora_up starts at zero: any non-zero value shows the optimizer really stepped.
            if "lora_up" in key and bool(tensor.abs().sum() > 0):
                trained = True
        if not trained:
            raise SelfTestFailure(f"the LoRA file {path} is untrained: every lora_up weight is still zero")
    return len(keys)


def run_self_test(work_root: Path | None = None, steps: int = SELF_TEST_STEPS, keep: bool = False) -> SelfTestResult:
    """Run every step; never raises (but for KeyboardInterrupt).

    The temporary folder is removed after a pass (unless ``keep``) and kept after a failed
    training, whose run log the reason points to.
    """
    started = time.monotonic()
    prefix = f"LoRA Kiln {__version__} self-test ({how_installed()})"
    work_dir: Path | None = None
    keep_files = keep
    try:
        with _step("finding the shipped resources"):
            from core.system.resources import resources_root

            resources_root()
        root = work_root or temp_root()
        with _step(f"creating a temporary folder in {root} (point TMPDIR at a writable folder)"):
            work_dir = Path(tempfile.mkdtemp(prefix="lorakiln-self-test-", dir=root))
        with _step("loading the built-in demo preset"):
            loaded = self_test_config(work_dir, steps)
        with _step("importing the training engine (torch, diffusers, transformers, peft)"):
            from core.training.engine import Trainer
            from core.training.events import Failed, ListSink, SampleImage, StepMetrics
        sink = ListSink()
        with _step("training"):
            trainer = Trainer(loaded.config, sink, description="LoRA Kiln self-test")
            result = trainer.run()
        if isinstance(result, Failed):
            keep_files = True
            details = "\n".join([*(f"  - {advice}" for advice in result.advice), result.traceback])
            raise SelfTestFailure(f"training ({result.kind}): {result.summary}"
                                  + (f"; run log: {result.log_path}" if result.log_path else ""), details)
        if result.reason != "completed" or not result.lora_path:
            raise SelfTestFailure(f"training: it ended '{result.reason}' without a LoRA file")
        with _step("reading the LoRA file back"):
            n_tensors = check_lora_file(Path(result.lora_path), loaded.config.network.dim)
        n_samples = sum(Path(event.path).is_file() for event in sink.of(SampleImage))
        if not n_samples:
            raise SelfTestFailure("sampling: no sample image was written")
        plan = trainer.plan
        losses = [event.loss for event in sink.of(StepMetrics)]
        loss = f"loss {losses[-1]:.3f}" if losses and math.isfinite(losses[-1]) else "no loss reported"
        line = (f"{prefix} passed: demo model, {len(plan.images) if plan else 0} images in "
                f"{len(plan.buckets) if plan else 0} buckets, {result.steps} steps ({loss}), {n_samples} sample, "
                f"LoRA with {n_tensors} tensors; {time.monotonic() - started:.1f} s")
        return SelfTestResult(True, line)
    except SelfTestFailure as failure:
        details = failure.details
        if not details and failure.__cause__ is not None:
            details = "".join(traceback.format_exception(failure.__cause__))
        line = f"{prefix} FAILED while {failure}"
        if keep_files and work_dir is not None:
            line += f" (files kept in {work_dir})"
        return SelfTestResult(False, line, details)
    finally:
        if work_dir is not None and not keep_files:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(keep: bool = False) -> int:
    """Run the self-test, print the line (details on stderr), record it; 0 when it passed."""
    result = run_self_test(keep=keep)
    print(result.line, flush=True)
    if result.details:
        print(result.details, file=sys.stderr, flush=True)
    try:
        result_file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(result_file(), result.line + "\n" + (result.details + "\n" if result.details else ""))
    except OSError as err:  # the result is already printed; a read-only log folder must not change it
        print(f"(could not record the result in {result_file()}: {err})", file=sys.stderr, flush=True)
    return 0 if result.ok else 1
