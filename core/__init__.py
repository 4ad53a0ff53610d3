"""LoRA Kiln's engine: everything that is not Qt.

Nothing under ``core`` may import PySide6, shiboken6 or pyqtgraph (tests/test_core_no_qt.py).
"""

import os as _os

__version__ = "0.1.0"

# Offline by design: no code path may reach a model hub. Without this, a missing hub
# file makes huggingface_hub retry for minutes before failing.
_os.environ["HF_HUB_OFFLINE"] = "1"
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _drop_bitsandbytes_kernels_note() -> None:
    """bitsandbytes (imported by peft and for AdamW8bit) logs at import, on CPUs with
    AVX512-BF16, that the optional 'kernels' package for its 4-bit matrix kernels is missing.
    LoRA Kiln uses only its optimizers, which do not need it: the note would only worry
    people. Only that message is dropped; a filter costs nothing until bitsandbytes logs."""
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "from kernels-community" not in record.getMessage())


_drop_bitsandbytes_kernels_note()
