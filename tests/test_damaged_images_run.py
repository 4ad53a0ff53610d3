"""An image whose header is sound and whose data is garbage passes planning (which reads
headers only) and stops the run at its first decode, as a data error that names the file,
whether latents are cached first or pixels are loaded every step."""

from pathlib import Path

import pytest

from core.config.schema import LatentCache
from tests.damaged_images import garbage_png


@pytest.mark.parametrize("cache", [LatentCache.MEMORY, LatentCache.OFF])
def test_a_run_stops_at_the_first_decode_of_a_damaged_image_naming_it(tmp_path: Path, cache: LatentCache) -> None:
    from core.training.engine import Trainer
    from core.training.events import Failed, ListSink, StepMetrics
    from tests.engine_fixtures import tiny_config

    config = tiny_config(tmp_path, steps=20)
    config.dataset.latent_cache = cache
    config.training.batch_size = 1  # the damaged image is in the first epoch's batches, alone
    bad = garbage_png(Path(config.dataset.subsets[0].image_dir) / "2_kiln" / "img2.png", (128, 64))
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Failed) and result.kind == "data", getattr(result, "traceback", result)
    assert result.summary.startswith(f"cannot load image {bad}: the file is damaged")
    assert result.advice == ("replace or remove that image, then plan the dataset again",)
    steps = len(sink.of(StepMetrics))
    # Caching decodes every image before the first step; without a cache the image is met
    # within the first epoch: 5 images, 2 repeats, batches of one.
    assert steps == 0 if cache is LatentCache.MEMORY else steps < 10
