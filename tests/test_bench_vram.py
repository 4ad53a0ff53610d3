"""benchmarks/bench_vram.py: the script runs (``--quick``: the demo models at small sizes) and
prints every row with its ratio to its aim; its bare diffusers + peft step trains the layers
the engine trains."""

import importlib.util
import re
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_vram.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_vram", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vram"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench_vram = _load()


def test_the_quick_run_prints_every_row_with_its_ratio_to_its_aim(capsys):
    assert bench_vram.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for size, seed in ((64, 8.6), (96, 9.7), (128, 10.9), (160, 13.1)):
        assert re.search(rf"^\(a\) SD 1\.5 demo model {size}px batch 3 .* <= 60% of {seed} GB +\d+\.\d\d", out, re.M)
    engine = re.search(r"^\(b\) engine step / bare diffusers\+peft step.* = (\d\.\d{3}) +within 5% +(\d+\.\d\d)", out,
                       re.M)
    assert engine and abs(float(engine.group(1)) - 1) < 0.05  # the engine adds nothing to the step
    assert re.search(r"^\(c\) SDXL demo model 256px batch 1, sdxl-lora-8gb .* < 7\.5 GB +\d+\.\d\d", out, re.M)
    assert re.search(r"^\(d\) SDXL demo model 256px batch 1, sdxl-lora-8gb \+ fp8 base .* < 4\.5 GB +\d+\.\d\d", out,
                     re.M)
    assert "aims met" in out


def test_the_bare_step_gives_lora_to_the_layers_the_engine_does():
    from core.models.lora import unet_targets

    unet = bench_vram.bare_unet(quick=False)  # full-size SD 1.5, weightless
    config = bench_vram.seed_config(quick=False)
    assert sorted(bench_vram.kohya_unet_targets(unet)) == sorted(unet_targets(unet, config.network))
    assert next(unet.parameters()).device == torch.device("meta")
