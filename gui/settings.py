"""The app's remembered settings (window state, last preset, run folders): one QSettings
file per user, shared by the main window and the tabs."""

from __future__ import annotations

from PySide6.QtCore import QSettings


def settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "LoRA Kiln", "LoRA Kiln")
