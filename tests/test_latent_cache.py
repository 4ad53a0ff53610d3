"""The latent cache: filled once, invalidated by what the latents depend on, never crashed by
a damaged file; the Dataset serves cached latents instead of pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.config import DatasetParams, Duration, SubsetParams, TrainingParams
from core.latent_cache import CacheCancelled, LatentCache
from core.pipeline import BucketBatchDataset, MissingLatents, samples
from core.plan import DatasetPlan, plan_dataset

SIZES = [(128, 128), (200, 70), (70, 200), (100, 100), (190, 64)]


class FakeVae:
    """Stands in for the VAE: average-pools by 8 into 4 channels and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(pixels.shape))
        pooled = F.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)

    @property
    def encoded(self) -> int:
        return sum(shape[0] for shape in self.calls)


def _images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def _plan(folder: Path, resolution: int = 128, **options: object) -> DatasetPlan:
    subset = SubsetParams(image_dir=str(folder), **options)  # type: ignore[arg-type]
    data = DatasetParams(subsets=[subset], resolution=(resolution, resolution), min_bucket_reso=64,
                         max_bucket_reso=256, bucket_reso_steps=64)
    training = TrainingParams(batch_size=2, duration=Duration.EPOCHS, max_train_epochs=1)
    return plan_dataset(data, training)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _images(tmp_path / "train", SIZES)
    return tmp_path / "train"


def _disk(tmp_path: Path, vae_id: str = "vae-a") -> LatentCache:
    return LatentCache("disk", tmp_path / "cache", vae_id)


def test_a_second_fill_of_a_warm_disk_cache_encodes_nothing(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder)
    vae = FakeVae()
    assert _disk(tmp_path).fill(samples(plan), vae, flip_aug_keys=False) == len(SIZES)
    vae.calls.clear()
    assert _disk(tmp_path).fill(samples(plan), vae, flip_aug_keys=False) == 0
    assert vae.calls == []


def test_fill_batches_by_bucket_up_to_the_batch_size(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder)
    vae = FakeVae()
    _disk(tmp_path).fill(samples(plan), vae, batch_size=2, flip_aug_keys=False)
    assert all(shape[0] <= 2 for shape in vae.calls)
    assert vae.encoded == len(SIZES)


def test_flipped_latents_are_made_for_flip_aug_subsets(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder, flip_aug=True)
    cache = LatentCache("memory", None, "vae-a")
    assert cache.fill(samples(plan), FakeVae(), flip_aug_keys=True) == 2 * len(SIZES)
    sample = samples(plan)[0]
    plain, mirrored = cache.get(cache.key(sample, False)), cache.get(cache.key(sample, True))
    assert plain is not None and mirrored is not None
    assert torch.allclose(plain.flip(-1), mirrored, atol=1e-6)


def test_disk_entries_hold_exactly_what_encode_returned(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder)
    cache = _disk(tmp_path)
    cache.fill(samples(plan), FakeVae(), flip_aug_keys=False)
    sample = samples(plan)[1]
    key = cache.key(sample, False)
    stored = cache.get(key)
    assert cache.path(key) == tmp_path / "cache" / key[:2] / f"{key}.safetensors"
    assert stored is not None and stored.dtype == torch.float32
    w, h = sample.assignment.bucket
    assert tuple(stored.shape) == (4, h // 8, w // 8)


def test_a_changed_modification_time_invalidates(tmp_path: Path, folder: Path) -> None:
    _disk(tmp_path).fill(samples(_plan(folder)), FakeVae(), flip_aug_keys=False)
    stat = os.stat(folder / "img0.png")
    os.utime(folder / "img0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    vae = FakeVae()
    assert _disk(tmp_path).fill(samples(_plan(folder)), vae, flip_aug_keys=False) == 1


def test_changed_bucket_settings_invalidate(tmp_path: Path, folder: Path) -> None:
    _disk(tmp_path).fill(samples(_plan(folder)), FakeVae(), flip_aug_keys=False)
    assert _disk(tmp_path).fill(samples(_plan(folder, resolution=192)), FakeVae(),
                                flip_aug_keys=False) == len(SIZES)


def test_another_vae_invalidates(tmp_path: Path, folder: Path) -> None:
    _disk(tmp_path).fill(samples(_plan(folder)), FakeVae(), flip_aug_keys=False)
    assert _disk(tmp_path, "vae-b").fill(samples(_plan(folder)), FakeVae(),
                                         flip_aug_keys=False) == len(SIZES)


def test_a_truncated_cache_file_is_encoded_again(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder)
    cache = _disk(tmp_path)
    cache.fill(samples(plan), FakeVae(), flip_aug_keys=False)
    path = cache.path(cache.key(samples(plan)[0], False))
    path.write_bytes(path.read_bytes()[:40])
    assert cache.get(cache.key(samples(plan)[0], False)) is None
    assert cache.fill(samples(plan), FakeVae(), flip_aug_keys=False) == 1
    assert cache.get(cache.key(samples(plan)[0], False)) is not None


def test_memory_mode_fills_once(folder: Path) -> None:
    plan = _plan(folder)
    cache = LatentCache("memory", None, "vae-a")
    assert cache.fill(samples(plan), FakeVae(), flip_aug_keys=False) == len(SIZES)
    assert cache.fill(samples(plan), FakeVae(), flip_aug_keys=False) == 0


def test_cancelling_stops_between_batches(tmp_path: Path, folder: Path) -> None:
    vae = FakeVae()
    with pytest.raises(CacheCancelled):
        _disk(tmp_path).fill(samples(_plan(folder)), vae, batch_size=1, flip_aug_keys=False,
                             cancelled=lambda: len(vae.calls) >= 2)
    assert len(vae.calls) == 2


def test_progress_counts_up_to_the_missing_entries(folder: Path) -> None:
    reports: list[tuple[int, int]] = []
    LatentCache("memory", None, "v").fill(samples(_plan(folder)), FakeVae(), batch_size=2,
                                          flip_aug_keys=False, progress=lambda d, t: reports.append((d, t)))
    assert reports[0] == (0, len(SIZES)) and reports[-1] == (len(SIZES), len(SIZES))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_a_disk_cache_needs_a_folder() -> None:
    with pytest.raises(ValueError, match="folder"):
        LatentCache("disk", None, "v")


def test_the_dataset_serves_cached_latents_instead_of_pixels(tmp_path: Path, folder: Path) -> None:
    plan = _plan(folder, flip_aug=True)
    cache = _disk(tmp_path)
    cache.fill(samples(plan), FakeVae(), flip_aug_keys=True)
    dataset = BucketBatchDataset(plan, batch_size=2, seed=0, latent_cache=cache)
    for index in range(len(dataset)):
        batch = dataset[index]
        w, h = batch.bucket
        assert batch.pixels is None and batch.latents is not None
        assert tuple(batch.latents.shape) == (len(batch.keys), 4, h // 8, w // 8)


def test_missing_latents_are_an_error_not_encoded_on_the_fly(folder: Path) -> None:
    dataset = BucketBatchDataset(_plan(folder), batch_size=2, seed=0,
                                 latent_cache=LatentCache("memory", None, "v"))
    with pytest.raises(MissingLatents, match="fill the latent cache"):
        dataset[0]


def test_random_crop_cannot_use_a_latent_cache(folder: Path) -> None:
    plan = _plan(folder, random_crop=True)
    with pytest.raises(ValueError, match="random crop"):
        BucketBatchDataset(plan, batch_size=2, seed=0, latent_cache=LatentCache("memory", None, "v"))
