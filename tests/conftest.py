"""Test set-up shared by the whole suite: offscreen Qt and no model hub, before any import."""

import os

# Without a display pytest-qt aborts the whole run unless Qt is told to draw offscreen;
# this must happen before PySide6 is first imported.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"
