"""Which optimizers can run in this installation, found without importing them.

``validate`` runs after every edit in the form and before any model loads, so it asks the
import system whether a package is there (``importlib.util.find_spec``) instead of importing
bitsandbytes or transformers, which would pull in torch.
"""

from __future__ import annotations

import importlib.util

from core.config.schema import OptimizerType

# The package each optimizer comes from; AdamW and Lion are torch's and LoRA Kiln's own.
PACKAGE_OF: dict[OptimizerType, str] = {
    OptimizerType.ADAMW8BIT: "bitsandbytes",
    OptimizerType.PRODIGY: "prodigyopt",
    OptimizerType.DADAPT_ADAM: "dadaptation",
    OptimizerType.ADAFACTOR: "transformers",
}

# What to choose instead, nearest first: the same update with full-precision states, or the
# other optimizer that finds its own step size (its learning rate of 1.0 then stays right).
NEAREST: dict[OptimizerType, tuple[OptimizerType, ...]] = {
    OptimizerType.ADAMW8BIT: (OptimizerType.ADAMW,),
    OptimizerType.PRODIGY: (OptimizerType.DADAPT_ADAM, OptimizerType.ADAMW),
    OptimizerType.DADAPT_ADAM: (OptimizerType.PRODIGY, OptimizerType.ADAMW),
    OptimizerType.ADAFACTOR: (OptimizerType.ADAMW,),
}

# bitsandbytes 0.50 publishes builds for these; elsewhere pip cannot install it.
_PLATFORMS = {"bitsandbytes": "it has builds for Windows, Linux and Apple-silicon Macs"}


def is_installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def missing_package(kind: OptimizerType) -> str | None:
    """The package ``kind`` needs that is not installed here, or None when it can run."""
    package = PACKAGE_OF.get(kind)
    return package if package is not None and not is_installed(package) else None


def nearest_available(kind: OptimizerType) -> OptimizerType:
    return next((other for other in NEAREST.get(kind, ()) if missing_package(other) is None),
                OptimizerType.ADAMW)


def unavailable_message(kind: OptimizerType) -> str | None:
    """Why ``kind`` cannot run in this installation and what to choose, or None."""
    package = missing_package(kind)
    if package is None:
        return None
    where = f" ({_PLATFORMS[package]})" if package in _PLATFORMS else ""
    return (f"{kind.value} needs the {package} package, which is not installed here{where}: "
            f"install it into LoRA Kiln's environment (pip install {package}), or choose "
            f"{nearest_available(kind).value}, the nearest optimizer that runs here")
