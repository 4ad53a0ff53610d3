"""The model libraries are imported once, one thread at a time (core.models.libraries): a run,
a grid or the scan's tokenizer started while the VRAM forecast imports diffusers must not meet
a half-imported lazy module (it failed a run with "cannot import name 'AutoencoderKL'")."""

from __future__ import annotations

import importlib
import threading
import types

import pytest

from core.models import libraries


class Sentinel(Exception):
    pass


def _refuse() -> None:
    raise Sentinel


def test_every_name_the_model_code_takes_is_imported_for_real():
    libraries.load_model_libraries()
    for module_name, names in libraries.NAMES:
        module = importlib.import_module(module_name)
        # A lazy module (diffusers, transformers) keeps a name in its dict once imported.
        assert [n for n in names if n not in vars(module)] == [], module_name


def test_loading_a_base_model_imports_the_libraries_first(monkeypatch):
    from core.models.base_model import load_base_model

    monkeypatch.setattr(libraries, "load_model_libraries", _refuse)
    with pytest.raises(Sentinel):
        load_base_model("")  # before even the "no base model chosen" check


def test_the_vram_forecast_imports_the_libraries_first(monkeypatch):
    from core.config.schema import TrainConfig
    from core.training.vram_forecast import forecast_vram

    monkeypatch.setattr(libraries, "load_model_libraries", _refuse)
    with pytest.raises(Sentinel):
        forecast_vram(TrainConfig())


def test_a_tokenizer_import_waits_while_another_thread_loads_the_libraries(monkeypatch):
    release, inside = threading.Event(), threading.Event()

    def slow_import(name: str) -> types.ModuleType:
        if name == "json":  # the loading thread: hold the lock until released
            inside.set()
            assert release.wait(30)
        return importlib.import_module(name)

    monkeypatch.setattr(libraries, "NAMES", (("json", ("dumps",)),))
    monkeypatch.setattr(libraries, "_loaded", False)
    monkeypatch.setattr(libraries, "importlib", types.SimpleNamespace(import_module=slow_import))
    loader = threading.Thread(target=libraries.load_model_libraries)
    loader.start()
    assert inside.wait(30)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(libraries.imported("string", "ascii_letters")))
    reader.start()
    reader.join(0.3)
    assert got == []  # still waiting for the loader
    release.set()
    loader.join(30)
    reader.join(30)
    assert got == ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    assert libraries._loaded
