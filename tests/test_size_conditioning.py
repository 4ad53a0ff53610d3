"""SDXL's size and crop conditioning per image: the numbers sd-scripts gives, in every path.

Each expected row below is worked out by hand from sd-scripts' rule (kohya-ss/sd-scripts,
library/train_util.py, BucketManager.get_crop_ltrb and BaseDataset.__getitem__): fit the
*whole* original image inside the bucket, crop (left, top) = the margins of that fit, floored
to halves; a flipped image's left = bucket width - (left + fitted width); every value
truncated to an integer; rows are (original h, w, crop top, left, target h, w).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config.schema import DatasetParams, Duration, SubsetParams, TrainingParams
from core.data.dataset_plan import DatasetPlan
from core.data.latent_cache import LatentCache
from core.data.pipeline import Batch, BucketBatchDataset, EpochLoader
from core.data.plan import plan_dataset
from core.data.samples import samples
from core.data.size_conditioning import crop_ltrb, sampling_time_ids, time_ids, training_time_ids
from tests.test_latent_cache import FakeVae

Row = tuple[int, int, int, int, int, int]

# Resolution 128, buckets 64..256 in steps of 64: (64,256) (64,192) (128,128) (192,64) (256,64).
# {image size (w, h): (row unflipped, row flipped)}
EXPECTED: dict[tuple[int, int], tuple[Row, Row]] = {
    # Landscape, bucket 192x64 (w/h 3 > 2.857): the fit spans the height, fitted w = 64 * 200/70
    # = 182.857; left = (192 - 182.857) // 2 = 4 and top 0 (the pixels were really cropped at
    # the top, resized 192x67, but sd-scripts reports the fit). Flipped: 192 - (4 + 182.857)
    # = 5.14 -> 5.
    (200, 70): ((70, 200, 0, 4, 64, 192), (70, 200, 0, 5, 64, 192)),
    # Portrait, bucket 64x192 (w/h 0.333 < 0.35): the fit spans the width, fitted h = 64 / 0.35
    # = 182.857; top = (192 - 182.857) // 2 = 4, left 0. Flipped: 64 - (0 + 64) = 0.
    (70, 200): ((200, 70, 4, 0, 192, 64), (200, 70, 4, 0, 192, 64)),
    # Nearly square into 128x128: fitted h = 128 * 126/130 = 124.06; top = 3.94 // 2 = 1.
    (130, 126): ((126, 130, 1, 0, 128, 128), (126, 130, 1, 0, 128, 128)),
    # Bucket 192x64 (3 > 2.969): fitted w = 190 exactly; left = 2 // 2 = 1; flipped 192 - 191 = 1.
    (190, 64): ((64, 190, 0, 1, 64, 192), (64, 190, 0, 1, 64, 192)),
    # Upscaled 100 -> 128: the original size is the size before resizing.
    (100, 100): ((100, 100, 0, 0, 128, 128), (100, 100, 0, 0, 128, 128)),
}
SIZES = list(EXPECTED)


def _images(folder: Path, sizes: list[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Write one PNG per size; {path: size}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        written[str(path)] = (w, h)
    return written


def _plan(folder: Path, *, batch_size: int = 1, step: int = 64, no_upscale: bool = False,
          **options: object) -> DatasetPlan:
    subset = SubsetParams(image_dir=str(folder), **options)  # type: ignore[arg-type]
    data = DatasetParams(subsets=[subset], resolution=(128, 128), min_bucket_reso=64, max_bucket_reso=256,
                         bucket_reso_steps=step, bucket_no_upscale=no_upscale)
    training = TrainingParams(batch_size=batch_size, duration=Duration.EPOCHS, max_train_epochs=1)
    return plan_dataset(data, training)


def _rows(batches: list[Batch]) -> list[tuple[str, bool, Row]]:
    """(key, flipped, row) of every image of ``batches``."""
    found = []
    for batch in batches:
        assert batch.size_conditioning is not None
        assert batch.size_conditioning.dtype == torch.float32
        assert tuple(batch.size_conditioning.shape) == (len(batch.keys), 6)
        for key, flipped, row in zip(batch.keys, batch.flipped, batch.size_conditioning.tolist()):
            found.append((key, flipped, tuple(int(v) for v in row)))
    return found


def _epochs(dataset: BucketBatchDataset, epochs: int = 1) -> list[Batch]:
    batches = []
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        batches += [dataset[i] for i in range(len(dataset))]
    return batches


def _check(found: list[tuple[str, bool, Row]], sizes: dict[str, tuple[int, int]]) -> None:
    assert found
    for key, flipped, row in found:
        assert row == EXPECTED[sizes[key]][flipped], (sizes[key], flipped)


# ---------------------------------------------------------------- the arithmetic


def test_a_portrait_in_a_square_bucket_gets_a_crop_left_and_its_mirror_one_more() -> None:
    # 1000x1500 in 1024x1024 (1 > 0.667): fitted w = 1024 * 2/3 = 682.67, left = 341.33 // 2
    # = 170, right = 852.67; flipped left = 1024 - 852.67 = 171.33 -> 171.
    assert crop_ltrb((1024, 1024), (1000, 1500)) == pytest.approx((170, 0, 852.6667, 1024), abs=1e-3)
    assert training_time_ids((1000, 1500), (1024, 1024), False) == (1500, 1000, 0, 170, 1024, 1024)
    assert training_time_ids((1000, 1500), (1024, 1024), True) == (1500, 1000, 0, 171, 1024, 1024)
    # Truncated, not rounded: 1000x1400 has fitted w = 731.43, left = 292.57 // 2 = 146 and a
    # mirrored left of 1024 - (146 + 731.43) = 146.57 -> 146.
    assert training_time_ids((1000, 1400), (1024, 1024), True) == (1400, 1000, 0, 146, 1024, 1024)


def test_a_landscape_in_a_square_bucket_gets_a_crop_top_and_flips_unchanged() -> None:
    # 1500x1000 in 1024x1024: fitted h = 682.67, top = 170; left 0 and right 1024, so the
    # mirror's left is 1024 - 1024 = 0.
    assert training_time_ids((1500, 1000), (1024, 1024), False) == (1000, 1500, 170, 0, 1024, 1024)
    assert training_time_ids((1500, 1000), (1024, 1024), True) == (1000, 1500, 170, 0, 1024, 1024)


def test_an_sdxl_bucket() -> None:
    # 1920x1080 in 1344x768 (1.75 < 1.778): fitted h = 1344 * 1080/1920 = 756, top = 12 // 2 = 6.
    assert training_time_ids((1920, 1080), (1344, 768), False) == (1080, 1920, 6, 0, 768, 1344)


def test_the_target_size_is_the_given_one_when_it_is_not_the_bucket() -> None:
    # Latents of a bucket that is no multiple of 8 are trained at their own size; the crop
    # still comes from the bucket.
    assert training_time_ids((200, 70), (192, 64), False, target=(184, 64)) == (70, 200, 0, 4, 64, 184)


def test_time_ids_are_in_height_width_order() -> None:
    assert time_ids((640, 480), (12, 34), (512, 256)) == (480, 640, 12, 34, 256, 512)


def test_sampling_asks_for_an_uncropped_image_of_the_sample_size() -> None:
    assert sampling_time_ids(832, 1216) == (1216, 832, 0, 0, 1216, 832)


# ---------------------------------------------------------------- the data pipeline


def test_loaded_images_carry_their_rows(tmp_path: Path) -> None:
    sizes = _images(tmp_path / "train", SIZES)
    plan = _plan(tmp_path / "train")
    assert {str(i.record.path): i.bucket for i in plan.images}[str(tmp_path / "train/img0.png")] == (192, 64)
    found = _rows(_epochs(BucketBatchDataset(plan, batch_size=1, seed=0)))
    assert sorted(key for key, _, _ in found) == sorted(sizes)
    assert not any(flipped for _, flipped, _ in found)
    _check(found, sizes)


def test_flipped_images_carry_the_mirrored_crop_left(tmp_path: Path) -> None:
    sizes = _images(tmp_path / "train", SIZES)
    dataset = BucketBatchDataset(_plan(tmp_path / "train", flip_aug=True), batch_size=1, seed=3)
    found = _rows(_epochs(dataset, 6))
    landscape = str(tmp_path / "train/img0.png")
    assert {flipped for key, flipped, _ in found if key == landscape} == {False, True}
    _check(found, sizes)


def test_an_image_with_a_rotated_exif_counts_upright(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200x70, displayed 70x200
    Image.new("RGB", (200, 70), (10, 20, 30)).save(folder / "rotated.jpg", exif=exif)
    batch = BucketBatchDataset(_plan(folder), batch_size=1, seed=0)[0]
    assert _rows([batch]) == [(str(folder / "rotated.jpg"), False, EXPECTED[(70, 200)][False])]


def test_a_random_crop_keeps_the_planned_rows_as_sd_scripts_does(tmp_path: Path) -> None:
    # sd-scripts reports the fit's margins whatever window a random crop cut out.
    sizes = _images(tmp_path / "train", SIZES)
    dataset = BucketBatchDataset(_plan(tmp_path / "train", random_crop=True), batch_size=1, seed=11)
    batches = _epochs(dataset, 4)
    landscape = [b.pixels for b in batches if b.keys == [str(tmp_path / "train/img0.png")]]
    assert any(not torch.equal(landscape[0], other) for other in landscape[1:])  # crops did vary
    _check(_rows(batches), sizes)


def test_without_upscaling_the_bucket_is_the_snapped_size(tmp_path: Path) -> None:
    # bucket_no_upscale, step 32: 150x100 (area under 128^2) keeps its size and snaps down to
    # a 128x96 bucket (1.333 < 1.5): fitted h = 128 / 1.5 = 85.33, top = 10.67 // 2 = 5.
    _images(tmp_path / "train", [(150, 100)])
    plan = _plan(tmp_path / "train", step=32, no_upscale=True, flip_aug=True)
    assert (plan.images[0].bucket, plan.images[0].assignment.resized) == ((128, 96), (150, 100))
    found = _rows(_epochs(BucketBatchDataset(plan, batch_size=1, seed=0), 4))
    assert {flipped for _, flipped, _ in found} == {False, True}
    assert {row for _, _, row in found} == {(100, 150, 5, 0, 96, 128)}


def test_a_batch_of_two_has_one_row_per_image_in_key_order(tmp_path: Path) -> None:
    sizes = _images(tmp_path / "train", [(200, 70), (190, 64)])  # both in bucket 192x64
    dataset = BucketBatchDataset(_plan(tmp_path / "train", batch_size=2), batch_size=2, seed=1)
    assert len(dataset) == 1
    batch = dataset[0]
    assert batch.size_conditioning is not None
    assert batch.size_conditioning.tolist() == [list(EXPECTED[sizes[key]][False]) for key in batch.keys]
    assert batch.keys[0] != batch.keys[1]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_latents_carry_the_rows_without_reading_the_images(tmp_path: Path, mode: str) -> None:
    sizes = _images(tmp_path / "train", SIZES)
    plan = _plan(tmp_path / "train", flip_aug=True)
    cache = LatentCache(mode, tmp_path / "cache" if mode == "disk" else None, "vae")
    cache.fill(samples(plan), FakeVae(), flip_aug_keys=True)
    for path in sizes:
        Path(path).unlink()  # everything the rows need comes from the plan
    dataset = BucketBatchDataset(plan, batch_size=1, seed=3, latent_cache=cache)
    batches = _epochs(dataset, 6)
    assert all(batch.pixels is None and batch.latents is not None for batch in batches)
    found = _rows(batches)
    assert {flipped for key, flipped, _ in found if sizes[key] == (200, 70)} == {False, True}
    _check(found, sizes)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_loader_and_its_workers_deliver_the_rows(tmp_path: Path, num_workers: int) -> None:
    sizes = _images(tmp_path / "train", SIZES * 2)
    plan = _plan(tmp_path / "train", batch_size=2, flip_aug=True)
    dataset = BucketBatchDataset(plan, batch_size=2, seed=5)
    loader = EpochLoader(BucketBatchDataset(plan, batch_size=2, seed=5), num_workers=num_workers)
    try:
        loaded = list(loader.epoch(2, range(len(dataset))))
    finally:
        loader.close()
    dataset.set_epoch(2)
    assert len(loaded) == len(dataset)
    for index, batch in enumerate(loaded):
        assert batch.size_conditioning is not None
        assert torch.equal(batch.size_conditioning, dataset[index].size_conditioning)
    _check(_rows(loaded), sizes)


def test_pinning_pins_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _images(tmp_path / "train", SIZES[:1])
    batch = BucketBatchDataset(_plan(tmp_path / "train"), batch_size=1, seed=0)[0]
    pinned: list[torch.Tensor] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or self.clone())
    again = batch.pin_memory()
    assert any(tensor is batch.size_conditioning for tensor in pinned)
    assert again.size_conditioning is not batch.size_conditioning
    assert torch.equal(again.size_conditioning, batch.size_conditioning)
