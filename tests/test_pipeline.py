"""The bucket-batch Dataset: batch order, determinism, augmentation, reg weights, loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.batching import epoch_batches
from core.config.schema import DatasetParams, Duration, SubsetParams, TrainingParams
from core.data.images import ImageLoadError
from core.data.pipeline import Batch, BucketBatchDataset, EpochLoader, loader_workers
from core.data.samples import load_pixels, samples
from core.data.dataset_plan import DatasetPlan
from core.data.plan import plan_dataset
from tests.damaged_images import garbage_png

# Sizes that land in three buckets at 128x128 (buckets 64..256, step 64).
SIZES = [(128, 128), (130, 126), (200, 70), (190, 64), (70, 200), (64, 190), (128, 128), (100, 100)]
CAPTION = "sks, one, two, three, four, five, six"


def _images(folder: Path, sizes: list[tuple[int, int]], caption: str = CAPTION) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(sizes))
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption, encoding="utf-8")


def _plan(subsets: list[SubsetParams], batch_size: int = 2) -> DatasetPlan:
    data = DatasetParams(subsets=subsets, resolution=(128, 128), min_bucket_reso=64,
                         max_bucket_reso=256, bucket_reso_steps=64)
    training = TrainingParams(batch_size=batch_size, duration=Duration.EPOCHS, max_train_epochs=1)
    return plan_dataset(data, training)


@pytest.fixture
def plan(tmp_path: Path) -> DatasetPlan:
    _images(tmp_path / "train", SIZES)
    return _plan([SubsetParams(image_dir=str(tmp_path / "train"), num_repeats=2, flip_aug=True,
                               shuffle_caption=True, keep_tokens=1)])


def test_batches_hold_one_bucket_each_and_match_the_plan_count(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=1)
    assert len(plan.buckets) == 3
    assert len(dataset) == plan.batches_per_epoch
    seen = 0
    for index in range(len(dataset)):
        batch = dataset[index]
        w, h = batch.bucket
        assert batch.pixels is not None and batch.latents is None
        assert tuple(batch.pixels.shape) == (len(batch.keys), 3, h, w)
        assert len(batch.captions) == len(batch.flipped) == len(batch.keys)
        seen += len(batch.keys)
    assert seen == sum(plan.buckets.values())


def test_batch_order_is_epoch_batches_of_the_plan(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=5)
    dataset.set_epoch(3)
    expected = epoch_batches(plan.bucket_members(), 2, 5, 3)
    assert [(dataset[i].bucket, dataset[i].keys) for i in range(len(dataset))] == expected


def test_the_same_seed_epoch_and_index_give_the_same_batch(plan: DatasetPlan) -> None:
    first = BucketBatchDataset(plan, batch_size=2, seed=7)
    second = BucketBatchDataset(plan, batch_size=2, seed=7)
    for dataset in (first, second):
        dataset.set_epoch(2)
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert (a.keys, a.captions, a.flipped) == (b.keys, b.captions, b.flipped)
        assert torch.equal(a.pixels, b.pixels)


def test_another_epoch_gives_another_order(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=7)
    first = [dataset[i].keys for i in range(len(dataset))]
    dataset.set_epoch(2)
    assert [dataset[i].keys for i in range(len(dataset))] != first


def test_augmentation_varies_between_batches(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=7)
    batches = [dataset[i] for i in range(len(dataset))]
    flips = [flip for batch in batches for flip in batch.flipped]
    captions = {caption for batch in batches for caption in batch.captions}
    assert True in flips and False in flips
    assert len(captions) > 1
    assert all(caption.startswith("sks, ") for caption in captions)


def test_flipped_pixels_are_the_mirror_of_unflipped_ones(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=7)
    by_key: dict[tuple[str, bool], torch.Tensor] = {}
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            batch = dataset[index]
            for key, flip, pixels in zip(batch.keys, batch.flipped, batch.pixels):
                by_key[(key, flip)] = pixels
    pairs = [(pixels, by_key[(key, True)]) for (key, flip), pixels in by_key.items()
             if not flip and (key, True) in by_key]
    assert pairs
    for plain, mirrored in pairs:
        assert torch.equal(plain.flip(-1), mirrored)


def test_regularisation_samples_carry_the_prior_loss_weight(tmp_path: Path) -> None:
    _images(tmp_path / "train", SIZES[:4])
    _images(tmp_path / "reg", SIZES[:4], caption="dog")
    plan = _plan([SubsetParams(image_dir=str(tmp_path / "train")),
                  SubsetParams(image_dir=str(tmp_path / "reg"), is_reg=True)])
    dataset = BucketBatchDataset(plan, batch_size=2, seed=0, prior_loss_weight=0.25)
    weights: dict[str, float] = {}
    for index in range(len(dataset)):
        batch = dataset[index]
        assert batch.loss_weights.dtype == torch.float32
        weights.update(zip(batch.keys, batch.loss_weights.tolist()))
    assert {k: w for k, w in weights.items() if "reg" in Path(k).parent.name} == {
        str(tmp_path / "reg" / f"img{i}.png"): 0.25 for i in range(4)}
    assert all(w == 1.0 for k, w in weights.items() if Path(k).parent.name == "train")


def test_samples_take_their_subsets_options(plan: DatasetPlan) -> None:
    resolved = samples(plan)
    assert [s.key for s in resolved] == [str(i.record.path) for i in plan.images]
    assert all(s.options.flip_aug and s.options.keep_tokens == 1 for s in resolved)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_data_loader_yields_the_datasets_batches(plan: DatasetPlan, num_workers: int) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=3)
    loader = EpochLoader(dataset, num_workers=num_workers)
    try:
        loaded = list(loader.epoch(0, range(len(dataset))))
    finally:
        loader.close()
    assert len(loaded) == len(dataset)
    assert all(isinstance(batch, Batch) for batch in loaded)
    direct = dataset[4]
    assert (loaded[4].keys, loaded[4].captions, loaded[4].flipped) == (
        direct.keys, direct.captions, direct.flipped)
    assert torch.equal(loaded[4].pixels, direct.pixels)


def test_random_crop_stays_inside_the_image(tmp_path: Path) -> None:
    _images(tmp_path / "train", [(200, 70)])
    plan = _plan([SubsetParams(image_dir=str(tmp_path / "train"), num_repeats=4, random_crop=True)])
    dataset = BucketBatchDataset(plan, batch_size=1, seed=0)
    assert all(tuple(dataset[i].pixels.shape) == (1, 3, 64, 192) for i in range(len(dataset)))


def test_an_image_changed_since_planning_is_reported(tmp_path: Path) -> None:
    _images(tmp_path / "train", [(128, 128)])
    plan = _plan([SubsetParams(image_dir=str(tmp_path / "train"))])
    Image.new("RGB", (64, 128)).save(tmp_path / "train" / "img0.png")
    with pytest.raises(ImageLoadError, match="plan the dataset again"):
        BucketBatchDataset(plan, batch_size=1, seed=0)[0]


def test_an_image_damaged_past_its_header_fails_at_its_first_load_naming_the_file(tmp_path: Path) -> None:
    bad = garbage_png(tmp_path / "train" / "bad.png", (128, 128))
    plan = _plan([SubsetParams(image_dir=str(tmp_path / "train"))])
    assert [i.record.path for i in plan.images] == [bad]  # the header check lets it through
    with pytest.raises(ImageLoadError, match="damaged") as caught:
        load_pixels(samples(plan)[0], None, False)
    assert caught.value.path == str(bad) and str(bad) in str(caught.value)


def test_a_damaged_image_met_in_a_loader_worker_is_still_named(tmp_path: Path) -> None:
    # The loader re-raises a worker's error as exc_type(message): ImageLoadError must
    # survive that, or a damaged image would reach the person as a bare RuntimeError.
    bad = garbage_png(tmp_path / "train" / "bad.png", (128, 128))
    dataset = BucketBatchDataset(_plan([SubsetParams(image_dir=str(tmp_path / "train"))]), batch_size=1, seed=0)
    loader = EpochLoader(dataset, num_workers=1)
    with pytest.raises(ImageLoadError, match="damaged") as caught:
        list(loader.epoch(0, range(len(dataset))))
    loader.close()
    assert str(caught.value).startswith(f"cannot load image {bad}: the file is damaged")  # no traceback


def test_an_image_load_error_survives_pickling(tmp_path: Path) -> None:
    error = pickle.loads(pickle.dumps(ImageLoadError(tmp_path / "a.png", "the file is damaged")))
    assert (error.path, error.reason) == (str(tmp_path / "a.png"), "the file is damaged")
    assert str(error) == f"cannot load image {tmp_path / 'a.png'}: the file is damaged"


def test_an_index_past_the_epoch_raises_index_error(plan: DatasetPlan) -> None:
    dataset = BucketBatchDataset(plan, batch_size=2, seed=0)
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def _same_batches(left: list[Batch], right: list[Batch]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert (a.bucket, a.keys, a.captions, a.flipped) == (b.bucket, b.keys, b.captions, b.flipped)
        assert torch.equal(a.loss_weights, b.loss_weights) and torch.equal(a.pixels, b.pixels)


def test_worker_processes_yield_exactly_the_batches_of_the_training_process(plan: DatasetPlan) -> None:
    # Two epochs through one set of persistent workers, the second resumed after two batches:
    # the epoch travels with each index, so the workers' own dataset copies follow along.
    orders = {1: list(range(len(BucketBatchDataset(plan, batch_size=2, seed=5)))), 2: [5, 3, 1]}
    results = {}
    for workers in (0, 2):
        loader = EpochLoader(BucketBatchDataset(plan, batch_size=2, seed=5), num_workers=workers)
        try:
            results[workers] = {epoch: list(loader.epoch(epoch, order)) for epoch, order in orders.items()}
        finally:
            loader.close()
    for epoch in orders:
        _same_batches(results[2][epoch], results[0][epoch])
    reference = BucketBatchDataset(plan, batch_size=2, seed=5)
    reference.set_epoch(2)
    _same_batches(results[2][2], [reference[i] for i in orders[2]])


def test_loader_workers_are_left_out_for_latents_in_memory_and_capped_by_the_cpus() -> None:
    assert loader_workers(2, latents_in_memory=False, cpus=16) == 2
    assert loader_workers(8, latents_in_memory=False, cpus=4) == 3
    assert loader_workers(2, latents_in_memory=True, cpus=16) == 0
    assert loader_workers(2, latents_in_memory=False, cpus=1) == 0
    assert loader_workers(0, latents_in_memory=False, cpus=None) == 0


def test_a_batch_pins_every_tensor_it_holds(plan: DatasetPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[tuple[int, ...]] = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(tuple(self.shape)) or self)
    batch = BucketBatchDataset(plan, batch_size=2, seed=5)[0]
    again = batch.pin_memory()
    assert pinned == [tuple(batch.loss_weights.shape), tuple(batch.pixels.shape),
                      tuple(batch.size_conditioning.shape)]
    assert again.keys == batch.keys and again.latents is None


def test_the_dataset_survives_pickling_as_spawned_workers_receive_it(plan: DatasetPlan) -> None:
    # Windows and macOS start workers by "spawn": the dataset and collate function are pickled.
    dataset = BucketBatchDataset(plan, batch_size=2, seed=5)
    copy = pickle.loads(pickle.dumps(dataset))
    _same_batches([copy[(2, i)] for i in range(len(copy))], [dataset[(2, i)] for i in range(len(dataset))])


def test_workers_started_from_a_training_thread_are_spawned_and_yield_the_same_batches(plan: DatasetPlan) -> None:
    # The desktop app trains in a thread: forking there would copy locks other threads hold.
    import threading

    from core.data.pipeline import worker_start_method

    assert worker_start_method() is None  # the main thread keeps the platform's way
    found: dict = {}

    def train() -> None:
        found["method"] = worker_start_method()
        loader = EpochLoader(BucketBatchDataset(plan, batch_size=2, seed=5), num_workers=1)
        try:
            found["context"] = loader._loader.multiprocessing_context
            found["batches"] = list(loader.epoch(1, [0, 2, 1]))
        finally:
            loader.close()

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(timeout=600)
    import multiprocessing

    if multiprocessing.get_start_method() == "fork":
        assert found["method"] == "spawn" and found["context"].get_start_method() == "spawn"
    reference = BucketBatchDataset(plan, batch_size=2, seed=5)
    reference.set_epoch(1)
    _same_batches(found["batches"], [reference[i] for i in [0, 2, 1]])
