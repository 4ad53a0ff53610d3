"""The double-click build's pieces that can be checked without building it (that takes
minutes; CI builds it and runs its --self-test): the PyInstaller spec, the desktop entry
and its installer, the icons, the build extra's pins, CI, and Help > About."""

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
SPEC = PACKAGING / "lorakiln.spec"
ICONS = ROOT / "resources" / "icons"
INSTALL_ENTRY = PACKAGING / "linux" / "install-desktop-entry.sh"

# Keys of the freedesktop Desktop Entry Specification (1.4, what desktop-file-validate 0.26 knows) that a Type=Application entry may use.
DESKTOP_KEYS = {"Type", "Version", "Name", "GenericName", "NoDisplay", "Comment", "Icon", "Hidden", "OnlyShowIn",
                "NotShowIn", "DBusActivatable", "TryExec", "Exec", "Path", "Terminal", "Actions", "MimeType",
                "Categories", "Implements", "Keywords", "StartupNotify", "StartupWMClass", "PrefersNonDefaultGPU",
                "SingleMainWindow"}
MAIN_CATEGORIES = {"AudioVideo", "Audio", "Video", "Development", "Education", "Game", "Graphics", "Network",
                   "Office", "Science", "Settings", "System", "Utility"}


def _read_desktop(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("[Desktop Entry]\n"), "the first group must be [Desktop Entry]"
    parser = configparser.RawConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(text)
    assert parser.sections() == ["Desktop Entry"]
    return dict(parser["Desktop Entry"])


def _check_entry(entry: dict[str, str]) -> None:
    assert set(entry) <= DESKTOP_KEYS, set(entry) - DESKTOP_KEYS
    assert entry["Type"] == "Application" and entry["Name"] == "LoRA Kiln"
    assert entry["Terminal"] == "false" and entry["StartupNotify"] in ("true", "false")
    categories = entry["Categories"].split(";")
    assert categories[-1] == "" and MAIN_CATEGORIES & set(categories)  # a ';'-terminated list with a main one
    assert entry["Keywords"].endswith(";")
    # The icon is named by theme name, and that name is the icon file the installer copies.
    assert entry["Icon"] == "lorakiln" and (ICONS / f"{entry['Icon']}.png").is_file()
    codes = re.findall(r"%.", entry["Exec"])
    assert set(codes) <= {"%f", "%F", "%u", "%U"} and len(codes) <= 1


def test_the_desktop_entry_template_is_valid_apart_from_the_app_path():
    entry = _read_desktop(PACKAGING / "linux" / "lorakiln.desktop")
    _check_entry(entry)
    assert entry["Exec"] == '"@APP@" gui %f' and entry["TryExec"] == "@APP@"


def _fake_app(folder: Path) -> Path:
    """What the installer needs of a built app folder: the executable and the bundled icon."""
    (folder / "_internal" / "resources" / "icons").mkdir(parents=True)
    shutil.copy(ICONS / "lorakiln.png", folder / "_internal" / "resources" / "icons" / "lorakiln.png")
    shutil.copy(PACKAGING / "linux" / "lorakiln.desktop", folder / "lorakiln.desktop")
    app = folder / "lorakiln"
    app.write_text("#!/bin/sh\nexit 0\n")
    app.chmod(0o755)
    return folder


def _install(*args: str, data_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    return subprocess.run(["sh", str(INSTALL_ENTRY), *args], capture_output=True, text=True, env=env)


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script")
def test_the_installer_writes_a_valid_entry_that_runs_the_app_and_uninstalls(tmp_path):
    app_dir = _fake_app(tmp_path / "my apps" / "lorakiln")
    data = tmp_path / "data"
    result = _install(str(app_dir), data_home=data)
    assert result.returncode == 0, result.stderr
    desktop = data / "applications" / "lorakiln.desktop"
    entry = _read_desktop(desktop)
    _check_entry(entry)
    assert entry["Exec"] == f'"{app_dir / "lorakiln"}" gui %f'  # quoted: the path has a space
    assert entry["TryExec"] == str(app_dir / "lorakiln")
    icon = data / "icons" / "hicolor" / "256x256" / "apps" / "lorakiln.png"
    assert icon.read_bytes() == (ICONS / "lorakiln.png").read_bytes()
    if shutil.which("desktop-file-validate"):
        check = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    removed = _install("--uninstall", data_home=data)
    assert removed.returncode == 0 and not desktop.exists() and not icon.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script")
def test_the_installer_refuses_an_incomplete_folder_and_names_what_is_missing(tmp_path):
    app_dir = _fake_app(tmp_path / "lorakiln")
    (app_dir / "_internal" / "resources" / "icons" / "lorakiln.png").unlink()
    result = _install(str(app_dir), data_home=tmp_path / "data")
    assert result.returncode == 1
    assert f"the icon {app_dir}/_internal/resources/icons/lorakiln.png is missing" in result.stderr
    assert not (tmp_path / "data" / "applications" / "lorakiln.desktop").exists()
    not_an_app = _install(str(tmp_path), data_home=tmp_path / "data")
    assert not_an_app.returncode == 1 and f"{tmp_path}/lorakiln is not an executable" in not_an_app.stderr


def _spec_tree() -> ast.Module:
    return ast.parse(SPEC.read_text(encoding="utf-8"))


def _spec_constant(name: str):
    for node in _spec_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"{name} is not assigned in the spec")


def test_the_spec_names_the_icons_the_entry_point_and_resources():
    text = SPEC.read_text(encoding="utf-8")
    assert '"resources" / "icons" / "lorakiln.ico"' in text and '"resources" / "icons" / "lorakiln.png"' in text
    assert (ICONS / "lorakiln.ico").is_file() and (ICONS / "lorakiln.png").is_file()
    assert '"packaging" / "lorakiln_entry.py"' in text and (PACKAGING / "lorakiln_entry.py").is_file()
    assert 'ROOT / "resources"' in text  # every shipped file, found in the bundle through sys._MEIPASS
    assert "from core.cli.main import main" in (PACKAGING / "lorakiln_entry.py").read_text(encoding="utf-8")


def test_the_spec_builds_a_windowed_app_and_a_console_sibling_in_one_folder():
    calls = [n for n in ast.walk(_spec_tree()) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "executable"]
    made = {(ast.unparse(c.args[0]), ast.literal_eval(c.keywords[0].value)) for c in calls}
    assert made == {("APP_NAME", False), ("f'{APP_NAME}-cli'", True)}
    assert ast.literal_eval(_spec_constant("APP_NAME")) == "lorakiln"
    assert "exclude_binaries=True" in SPEC.read_text(encoding="utf-8")  # one-folder, not one-file


def test_the_spec_collects_what_is_imported_by_name_and_the_metadata_the_stack_reads():
    hidden = ast.unparse(_spec_constant("HIDDEN"))
    # The CLI imports its subcommands and the GUI by module name; PyInstaller cannot see that.
    for package in ("core", "gui", "diffusers.models", "diffusers.pipelines.stable_diffusion",
                    "diffusers.schedulers", "diffusers.loaders", "transformers.models.clip"):
        assert f"collect_submodules('{package}')" in hidden
    from core.cli.main import SUBCOMMANDS

    assert all(module.startswith("core.") for module, _ in SUBCOMMANDS.values())
    metadata = set(ast.literal_eval(_spec_constant("METADATA_OF")))
    assert {"requests", "filelock", "numpy", "diffusers", "transformers", "peft", "accelerate", "safetensors",
            "torch", "huggingface_hub", "tokenizers", "tqdm", "regex", "pyyaml", "pillow", "packaging"} <= metadata


def test_the_icons_are_drawn_by_the_script_and_come_in_the_sizes_platforms_use():
    sys.path.insert(0, str(PACKAGING))
    try:
        import make_icons
    finally:
        sys.path.remove(str(PACKAGING))
    png = Image.open(ICONS / "lorakiln.png")
    assert png.size == (256, 256) and png.mode == "RGBA"
    assert make_icons.draw_icon().tobytes() == png.convert("RGBA").tobytes()
    ico = Image.open(ICONS / "lorakiln.ico")
    assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])


def _requirements(names: list[str]) -> list[str]:
    return [re.split(r"[<>=!\[ ;]", n, maxsplit=1)[0].lower().replace("_", "-") for n in names]


def test_the_build_extra_is_pinned_in_the_lock():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    pinned = {line.split("==")[0].strip().lower().replace("_", "-")
              for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
              if "==" in line and not line.startswith("#")}
    assert set(_requirements(extras["build"])) == {"pyinstaller", "pyinstaller-hooks-contrib", "build"}
    assert set(_requirements(extras["build"])) <= pinned


def test_ci_runs_the_readme_test_command_before_building_and_self_testing():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    test_at = lines.index("python3 dev.py test")
    build_at = next(i for i, line in enumerate(lines) if line.startswith("python3 dev.py build"))
    assert test_at < build_at and "--self-test" in lines[build_at]


def test_build_outputs_are_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "build/pyinstaller/x", "dist/lorakiln/lorakiln"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.split() == ["build/pyinstaller/x", "dist/lorakiln/lorakiln"]


def test_about_shows_the_version_how_it_runs_and_every_per_user_location(qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from core import __version__
    from core.system.paths import default_runs_dir, log_dir, user_data_dir, user_presets_dir
    from gui.main_window import MainWindow, settings

    window = MainWindow()
    qtbot.addWidget(window)
    shown = []
    monkeypatch.setattr(QMessageBox, "about", lambda parent, title, text: shown.append(text))
    window._on_about_triggered()
    text = shown[0]
    assert f"LoRA Kiln {__version__}" in text and "Running: from source" in text
    for place in (user_data_dir(), default_runs_dir(), user_presets_dir(), log_dir(), settings().fileName()):
        assert str(place) in text


def test_the_wheel_lists_every_python_package_of_the_source_tree():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    present = {".".join(init.parent.relative_to(ROOT).parts)
               for top in ("core", "gui") for init in (ROOT / top).rglob("__init__.py")}
    assert present <= listed, f"add {sorted(present - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert "lorakiln_resources" in listed


def test_qt_loads_the_window_icon_that_the_app_sets(qapp):
    from PySide6.QtGui import QIcon

    from core.system.resources import resource_path

    icon = QIcon(str(resource_path("icons", "lorakiln.png")))
    assert not icon.isNull() and icon.pixmap(64, 64).width() == 64
    assert 'resource_path("icons", "lorakiln.png")' in (ROOT / "gui" / "app.py").read_text(encoding="utf-8")


def test_bitsandbytes_is_a_pinned_dependency_and_the_bundle_carries_its_native_library():
    import tomllib

    # AdamW8bit is the default optimizer: a fresh install and the built app must have it.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert "bitsandbytes" in _requirements(dependencies)
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("bitsandbytes==") for line in lock)
    # It loads libbitsandbytes_* with ctypes from its own folder, and picks back ends at import.
    assert "collect_submodules('bitsandbytes')" in ast.unparse(_spec_constant("HIDDEN"))
    assert ast.unparse(_spec_constant("BINARIES")) == "collect_dynamic_libs('bitsandbytes')"
    assert "binaries=BINARIES" in SPEC.read_text(encoding="utf-8")
    assert "bitsandbytes" in ast.literal_eval(_spec_constant("METADATA_OF"))


def test_a_source_checkout_uses_its_own_resources_folder():
    """Run from a checkout, the shipped data is that checkout's resources/, not the one of
    whatever copy happens to be installed as lorakiln_resources."""
    from core.system.resources import resources_root

    assert resources_root() == ROOT / "resources"
