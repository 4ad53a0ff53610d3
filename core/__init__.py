"""LoRA Kiln's engine: everything that is not Qt.

Nothing under ``core`` may import PySide6, shiboken6 or pyqtgraph (tests/test_core_no_qt.py).
"""

import os as _os

__version__ = "0.1.0"

# Offline by design: no code path may reach a model hub. Without this, a missing hub
# file makes huggingface_hub retry for minutes before failing.
_os.environ["HF_HUB_OFFLINE"] = "1"
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
