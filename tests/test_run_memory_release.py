"""A finished GUI run leaves nothing behind: its U-Net, LoRA modules and optimizer are freed
once the run has ended (the worker collects in the GUI thread and trims the heap), and the
next run's peak memory is that run's own, not a figure carried over from the one before."""

import gc
import weakref

import pytest

import core.training.setup as setup
from core.training.events import Finished
from tests.engine_fixtures import tiny_config
from tests.gui_fixtures import quiet_training_tab

RUN_TIMEOUT_MS = 240_000
BALLAST_MB = 600


@pytest.fixture
def tab(qtbot):
    yield from quiet_training_tab(qtbot, RUN_TIMEOUT_MS)


def _run(tab, qtbot, config):  # noqa: ANN001, ANN202
    results = []
    tab.run_finished.connect(results.append)
    assert tab.start(config)
    qtbot.waitUntil(lambda: bool(results), timeout=RUN_TIMEOUT_MS)
    assert isinstance(results[0], Finished) and results[0].reason == "completed", results[0]
    return results[0]


@pytest.mark.slow
def test_the_model_of_a_finished_run_is_freed_and_the_next_runs_peak_is_its_own(tab, qtbot, tmp_path,
                                                                                  monkeypatch):
    import torch

    refs: dict[str, weakref.ref] = {}
    real_load = setup.load_network

    def recording_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        network = real_load(*args, **kwargs)
        refs["unet"] = weakref.ref(network.components.unet)
        for name, module in network.trained.items():
            refs[f"lora {name}"] = weakref.ref(module)
        if "ballast" not in refs:  # the first run only: a big allocation that lives as long as its model
            network.components.unet.ballast = torch.ones(BALLAST_MB * 1024 * 1024 // 4)
            refs["ballast"] = weakref.ref(network.components.unet.ballast)
        return network

    monkeypatch.setattr(setup, "load_network", recording_load)
    tab.set_start_blocked([])
    _run(tab, qtbot, tiny_config(tmp_path / "first", steps=2))
    first_peak = tab._latest.memory_run_peak_mb
    gc.collect()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert alive == [], f"still referenced after the run ended: {alive}"

    refs.pop("unet")
    _run(tab, qtbot, tiny_config(tmp_path / "second", steps=2))
    second_peak = tab._latest.memory_run_peak_mb
    assert first_peak - second_peak > BALLAST_MB * 0.7, (first_peak, second_peak)
