"""Every built-in preset trains on the README's install, on a CPU: its optimizer, precision
and network as shipped, on the demo model and a tiny dataset for two steps."""

import math

import pytest
from safetensors.torch import load_file

from core.config.schema import Duration, ModelFamily
from core.config.presets import builtin_preset_names, find_preset, load_preset
from core.models.family import family_named
from core.training.engine import Trainer
from core.training.events import CallbackSink, Finished, StepMetrics
from tests.engine_fixtures import tiny_config

STEPS = 2


@pytest.mark.slow
@pytest.mark.parametrize("name", builtin_preset_names())
def test_a_builtin_preset_trains_two_steps_on_a_cpu(name, tmp_path):
    config = load_preset(find_preset(name)).config
    tiny = tiny_config(tmp_path, steps=STEPS)
    # The preset's family's tiny built-in model (a preset for any family: SD 1.x's demo model).
    family = ModelFamily.SD1 if config.model.family is ModelFamily.AUTO else config.model.family
    config.model.base_model = family_named(family).built_in_models()[0]
    config.dataset = tiny.dataset  # small images, so the test is quick
    config.training.duration, config.training.max_train_steps = Duration.STEPS, STEPS
    config.schedule.warmup_steps = min(config.schedule.warmup_steps, STEPS - 1)
    config.sampling.every_n_epochs = config.sampling.every_n_steps = 0
    config.output.output_dir, config.output.output_name = tiny.output.output_dir, name
    losses = []
    sink = CallbackSink(lambda event: losses.append(event.loss) if isinstance(event, StepMetrics) else None)

    result = Trainer(config, sink).run()

    assert isinstance(result, Finished) and result.reason == "completed", result
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    # LoRA's up weights start at zero: a trained one has moved away from it.
    ups = [t for key, t in load_file(result.lora_path).items() if key.endswith("lora_up.weight")]
    assert ups and any(t.abs().max() > 0 for t in ups)


def test_the_builtin_presets_are_the_ones_the_test_above_covers():
    assert {"demo", "sd15-lora-8gb", "sd15-prodigy", "sdxl-lora-8gb", "sdxl-prodigy"} <= set(builtin_preset_names())
