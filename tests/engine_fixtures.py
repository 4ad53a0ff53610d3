"""A tiny training setup for engine tests: the demo model on a few 64-128 px images."""

from pathlib import Path

from PIL import Image, ImageDraw

from core.config.schema import DEMO_MODEL, Duration, LatentCache, OptimizerType, SubsetParams, TrainConfig


def tiny_dataset(root: Path) -> Path:
    folder = root / "data" / "2_kiln"
    folder.mkdir(parents=True)
    for i, size in enumerate([(64, 64), (64, 64), (128, 64), (64, 128), (96, 96)]):
        image = Image.new("RGB", size, (40 * i, 120, 200 - 30 * i))
        ImageDraw.Draw(image).ellipse([8, 8, size[0] - 8, size[1] - 8], fill=(250, 240, 220))
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"kiln, shape {i}, blue background")
    return root / "data"


def tiny_config(root: Path, steps: int = 6) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir=str(tiny_dataset(root)), kohya_layout=True,
                                           shuffle_caption=True, flip_aug=True)]
    config.dataset.resolution = (64, 64)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 64, 128
    config.dataset.latent_cache = LatentCache.MEMORY
    config.network.dim, config.network.alpha = 4, 2.0
    config.optimizer.type = OptimizerType.ADAMW
    config.optimizer.learning_rate = 1e-3
    config.training.batch_size = 2
    config.training.duration, config.training.max_train_steps = Duration.STEPS, steps
    config.training.mixed_precision = config.training.mixed_precision.NO
    config.output.output_dir = str(root / "runs")
    config.output.output_name = "tiny"
    return config
