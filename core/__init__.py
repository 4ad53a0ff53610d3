"""LoRA Kiln's engine: everything that is not Qt.

Nothing under ``core`` may import PySide6, shiboken6 or pyqtgraph (tests/test_core_no_qt.py).
"""

__version__ = "0.1.0"
