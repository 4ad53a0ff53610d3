"""The latent cache: filled once, invalidated by what the latents depend on, never crashed,
hung or misled by a damaged or foreign file; the Dataset serves cached latents instead of pixels."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save as save_tensors

from core.config.schema import DatasetParams, Duration, SubsetParams, TrainingParams
from core.data.latent_cache import CacheCancelled, LatentCache
from core.data.pipeline import BucketBatchDataset, MissingLatents
from core.data.samples import samples
from core.data.dataset_plan import DatasetPlan
from core.data.plan import plan_dataset

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


# ---------------------------------------------------------------- entries that cannot be trusted

ROOT = Path(__file__).resolve().parent.parent


def _filled(tmp_path: Path, folder: Path) -> tuple[LatentCache, list, Path]:
    """A warm disk cache, its samples, and the entry file of the first sample."""
    items = samples(_plan(folder))
    cache = _disk(tmp_path)
    cache.fill(items, FakeVae(), flip_aug_keys=False)
    return cache, items, cache.path(cache.key(items[0], False))


def _latents_of(sample, channels: int = 4, extra_rows: int = 0) -> torch.Tensor:
    w, h = sample.assignment.bucket
    return torch.ones(channels, h // 8 + extra_rows, w // 8)


def _encodes_only_the_first_again(tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture,
                                  latent_channels: int | None = None) -> None:
    items = samples(_plan(folder))
    cache, vae = _disk(tmp_path), FakeVae()
    with caplog.at_level(logging.WARNING, logger="lorakiln.latents"):
        assert cache.fill(items, vae, flip_aug_keys=False, latent_channels=latent_channels) == 1
    w, h = items[0].assignment.bucket
    assert vae.calls == [(1, 3, h, w)]  # encoded for that entry only
    assert cache.bad_entries == 1
    assert "1 latent cache entry could not be used and will be encoded again" in caplog.text
    assert items[0].record.display_path in caplog.text
    path = cache.path(cache.key(items[0], False))
    assert path.is_file() and not path.is_symlink()
    latents = cache.get(cache.key(items[0], False), items[0].assignment.bucket)
    assert latents is not None and tuple(latents.shape) == (4, h // 8, w // 8)
    assert cache.fill(items, FakeVae(), flip_aug_keys=False) == 0 and cache.bad_entries == 0


@pytest.mark.parametrize("damage", [
    "wrong height", "another tensor name", "two tensors", "integers", "four dimensions", "truncated",
    "padded", "not safetensors", "empty",
])
def test_an_entry_that_is_not_the_expected_latents_is_encoded_again(
        tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    cache, items, path = _filled(tmp_path, folder)
    good = _latents_of(items[0])
    content = {
        "wrong height": lambda: save_tensors({"latents": _latents_of(items[0], extra_rows=1)}),
        "another tensor name": lambda: save_tensors({"pixels": good}),
        "two tensors": lambda: save_tensors({"latents": good, "extra": good.clone()}),
        "integers": lambda: save_tensors({"latents": good.to(torch.int32)}),
        "four dimensions": lambda: save_tensors({"latents": good[None]}),
        "truncated": lambda: path.read_bytes()[:-7],
        "padded": lambda: path.read_bytes() + b"\0" * 16,
        "not safetensors": lambda: b"\xff" * 64,
        "empty": lambda: b"",
    }[damage]()
    path.write_bytes(content)
    assert not cache.contains(cache.key(items[0], False), items[0].assignment.bucket)
    _encodes_only_the_first_again(tmp_path, folder, caplog)


def test_an_entry_with_another_channel_count_is_encoded_again_when_the_count_is_known(
        tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache, items, path = _filled(tmp_path, folder)
    path.write_bytes(save_tensors({"latents": _latents_of(items[0], channels=16)}))
    _encodes_only_the_first_again(tmp_path, folder, caplog, latent_channels=4)


def test_the_channel_count_is_learned_from_the_first_latents_encoded(tmp_path: Path, folder: Path) -> None:
    items = samples(_plan(folder))
    cache = _disk(tmp_path)
    cache.fill(items, FakeVae(), flip_aug_keys=False)
    assert cache.latent_channels == 4
    assert cache.expected_shape((128, 64)) == (4, 8, 16)


def test_a_wrong_shape_entry_is_not_served_to_training(tmp_path: Path, folder: Path) -> None:
    cache, items, path = _filled(tmp_path, folder)
    path.write_bytes(save_tensors({"latents": _latents_of(items[0], extra_rows=1)}))
    dataset = BucketBatchDataset(_plan(folder), batch_size=1, seed=0, latent_cache=cache)
    index = next(i for i in range(len(dataset)) if dataset._batches[i][1] == ["0"])
    with pytest.raises(MissingLatents, match="img0.png .missing, damaged or of another shape"):
        dataset[index]


def test_a_folder_in_place_of_an_entry_is_replaced_by_the_entry(
        tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache, items, path = _filled(tmp_path, folder)
    path.unlink()
    path.mkdir()
    _encodes_only_the_first_again(tmp_path, folder, caplog)


def test_a_folder_with_contents_in_place_of_an_entry_is_named_not_deleted(tmp_path: Path, folder: Path) -> None:
    cache, items, path = _filled(tmp_path, folder)
    path.unlink()
    path.mkdir()
    (path / "keep.txt").write_text("someone's file")
    with pytest.raises(OSError, match="a folder stands where a latent cache file belongs") as caught:
        cache.fill(items, FakeVae(), flip_aug_keys=False)
    assert caught.value.filename == str(path)
    assert (path / "keep.txt").read_text() == "someone's file"


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="symlinks")
def test_a_link_in_place_of_an_entry_is_replaced_and_its_target_left_alone(
        tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache, items, path = _filled(tmp_path, folder)
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    _encodes_only_the_first_again(tmp_path, folder, caplog)
    assert elsewhere.read_bytes() == before


_FIFO_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from tests.test_latent_cache import FakeVae, _disk, _images, _plan
    from core.data.samples import samples

    tmp = Path(sys.argv[1])
    _images(tmp / "train", [(128, 128), (200, 70)])
    items = samples(_plan(tmp / "train"))
    cache = _disk(tmp)
    cache.fill(items, FakeVae(), flip_aug_keys=False)
    path = cache.path(cache.key(items[0], False))
    path.unlink()
    os.mkfifo(path)
    key, bucket = cache.key(items[0], False), items[0].assignment.bucket
    print("contains", cache.contains(key, bucket), "get", cache.get(key, bucket), flush=True)
    vae = FakeVae()
    print("encoded", cache.fill(items, vae, flip_aug_keys=False), "bad", cache.bad_entries, flush=True)
    print("regular", path.is_file(), "served", tuple(cache.get(key, bucket).shape), flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_in_place_of_an_entry_never_hangs_and_is_replaced(tmp_path: Path) -> None:
    # Opening a FIFO for reading waits for a writer for ever, so the check runs in a child
    # process with a generous limit: a regression fails here instead of hanging the suite.
    try:
        result = subprocess.run([sys.executable, "-c", _FIFO_SCRIPT, str(tmp_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the latent cache hung on a FIFO; it printed: {expired.stdout!r}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["contains False get None", "encoded 1 bad 1",
                                          "regular True served (4, 16, 16)"]


def test_memory_mode_does_not_serve_latents_of_another_shape(folder: Path) -> None:
    items = samples(_plan(folder))
    cache = LatentCache("memory", None, "v")
    cache.fill(items, FakeVae(), flip_aug_keys=False)
    key, bucket = cache.key(items[0], False), items[0].assignment.bucket
    cache.put(key, _latents_of(items[0], extra_rows=1))
    assert cache.get(key, bucket) is None and not cache.contains(key, bucket)
    vae = FakeVae()
    assert cache.fill(items, vae, flip_aug_keys=False) == 1 and cache.bad_entries == 1
    latents = cache.get(key, bucket)
    assert latents is not None and tuple(latents.shape) == tuple(_latents_of(items[0]).shape)


def test_an_encoder_giving_latents_of_the_wrong_size_is_an_error_naming_the_bucket(folder: Path) -> None:
    def halved(pixels: torch.Tensor) -> torch.Tensor:
        return FakeVae()(pixels)[:, :, ::2, ::2]

    with pytest.raises(ValueError, match=r"encode returned .* of bucket \d+x\d+, not"):
        LatentCache("memory", None, "v").fill(samples(_plan(folder)), halved, flip_aug_keys=False)
