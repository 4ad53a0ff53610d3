"""Masked loss: the mask weights the loss per latent pixel, follows its image through the
bucket resize, crop and flip, comes from a mask folder or the alpha channel, survives the
latent cache, and a missing or mis-sized mask stops the run before it starts, by name."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from contextlib import nullcontext
from PIL import Image

from core.config.schema import DatasetParams, Duration, SubsetParams, TrainConfig, TrainingParams
from core.data.dataset_plan import DatasetPlan
from core.data.images import ImageLoadError
from core.data.latent_cache import LatentCache
from core.data.masks import MaskError
from core.data.pipeline import Batch, BucketBatchDataset
from core.data.plan import plan_dataset
from core.data.samples import samples
from core.training.loss import weighted_loss


def _plan(subsets: list[SubsetParams], resolution: int = 128, masked_loss: bool = True) -> DatasetPlan:
    data = DatasetParams(subsets=subsets, resolution=(resolution, resolution), min_bucket_reso=64,
                         max_bucket_reso=256, bucket_reso_steps=64, masked_loss=masked_loss)
    training = TrainingParams(batch_size=2, duration=Duration.EPOCHS, max_train_epochs=1)
    return plan_dataset(data, training)


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth enough that resampling keeps it recognisable, varied enough that a wrong crop or
    a missed flip shows."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.NEAREST))


def _masked_folder(root: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    """Images whose three channels equal their masks' grey, so the two can be compared."""
    images, masks = root / "img", root / "mask"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        grey = _pattern(w, h, i)
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(images / f"img{i}.png")
        Image.fromarray(grey).save(masks / f"img{i}.png")
    return images, masks


# ------------------------------------------------------------------ the loss


def test_loss_ignores_what_lies_outside_the_mask() -> None:
    torch.manual_seed(0)
    prediction = torch.randn(1, 4, 8, 8, requires_grad=True)
    target = torch.randn(1, 4, 8, 8)
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., :32] = 1.0  # the left half of the image: latent columns 0..3
    loss = weighted_loss(prediction, target, torch.ones(1), masks=masks)
    changed = target.clone()
    changed[..., 4:] += 5.0
    assert weighted_loss(prediction, changed, torch.ones(1), masks=masks).item() == pytest.approx(loss.item())
    loss.backward()
    assert prediction.grad is not None
    assert torch.all(prediction.grad[..., 4:] == 0)
    assert torch.all(prediction.grad[..., :4] != 0)


def test_mask_weights_are_not_renormalised_by_the_masked_area() -> None:
    # sd-scripts multiplies by the mask and takes the plain mean: a half mask halves the loss.
    prediction, target = torch.ones(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., :32] = 1.0
    assert weighted_loss(prediction, target, torch.ones(1), masks=masks).item() == pytest.approx(0.5)
    # a latent pixel half covered by the mask gets half the weight (area averaging)
    partial = torch.zeros(1, 1, 64, 64)
    partial[..., :4] = 1.0
    expected = 0.5 / 8
    assert weighted_loss(prediction, target, torch.ones(1), masks=partial).item() == pytest.approx(expected)


def test_min_snr_weights_apply_after_the_masked_mean() -> None:
    prediction, target = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    masks = torch.ones(2, 1, 64, 64)
    masks[1] = 0.0
    loss = weighted_loss(prediction, target, torch.ones(2), snr_weights=torch.tensor([0.5, 4.0]), masks=masks)
    assert loss.item() == pytest.approx((0.5 + 0.0) / 2)


class _PointwiseUnet(torch.nn.Module):
    """A 1x1 convolution: each latent pixel's prediction depends on that pixel alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(sample=self.conv(noisy))


def _step_loss(latents: torch.Tensor, masks: torch.Tensor) -> float:
    from diffusers import DDPMScheduler

    from core.training.step import StepComputer

    torch.manual_seed(3)
    unet = _PointwiseUnet()
    components = SimpleNamespace(unet=unet, text_encoders={}, noise_scheduler=DDPMScheduler())
    family = SimpleNamespace(unet_inputs=lambda text, batch: {})
    computer = StepComputer(TrainConfig(), family, components, torch.device("cpu"),  # type: ignore[arg-type]
                            torch.Generator().manual_seed(11), nullcontext)
    computer.text_cache = SimpleNamespace(conditioning=lambda captions, device: None)
    batch = Batch(bucket=(64, 64), keys=["a"], captions=["x"], loss_weights=torch.ones(1), pixels=None,
                  latents=latents, flipped=[False], masks=masks)
    return computer.loss(batch).item()


def test_training_step_loss_does_not_see_the_image_outside_its_half_mask() -> None:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(1, 1, 64, 64)
    masks[..., :32] = 1.0
    changed = latents.clone()
    changed[..., 4:] = -changed[..., 4:] + 3.0
    assert _step_loss(changed, masks) == pytest.approx(_step_loss(latents, masks))
    # ...while without the mask the same change does change the loss
    ones = torch.ones_like(masks)
    assert _step_loss(changed, ones) != pytest.approx(_step_loss(latents, ones))


# ------------------------------------------------------------------ the data


def test_mask_is_cropped_and_flipped_exactly_like_its_image(tmp_path: Path) -> None:
    # non-square sizes, so the resize and the crop both act; random crop and flip on
    images, masks = _masked_folder(tmp_path, [(230, 90), (90, 230), (200, 70), (190, 75)])
    plan = _plan([SubsetParams(image_dir=str(images), mask_dir=str(masks), random_crop=True, flip_aug=True,
                               num_repeats=4)])
    dataset = BucketBatchDataset(plan, batch_size=2, seed=5, masked_loss=True)
    flips = 0
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            batch = dataset[index]
            assert batch.pixels is not None and batch.masks is not None
            w, h = batch.bucket
            assert w != h
            assert tuple(batch.masks.shape) == (len(batch.keys), 1, h, w)
            grey = (batch.pixels[:, :1] + 1.0) * 127.5 / 255.0
            assert torch.allclose(grey, batch.masks, atol=1.5 / 255)
            flips += sum(batch.flipped)
    assert flips > 0


def test_alpha_channel_is_the_mask_and_an_opaque_image_trains_everywhere(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    rgba = np.full((128, 128, 4), 200, dtype=np.uint8)
    rgba[:, 64:, 3] = 0
    rgba[:, :64, 3] = 255
    rgba[:8, :8, 3] = 128
    Image.fromarray(rgba, "RGBA").save(folder / "cut.png")
    Image.fromarray(np.full((128, 128, 3), 90, dtype=np.uint8)).save(folder / "plain.png")
    plan = _plan([SubsetParams(image_dir=str(folder), alpha_mask=True)], masked_loss=False)
    dataset = BucketBatchDataset(plan, batch_size=2, seed=0)
    batch = dataset[0]
    assert batch.masks is not None
    by_name = {Path(key).name: mask for key, mask in zip(batch.keys, batch.masks)}
    expected = torch.from_numpy(rgba[:, :, 3].astype(np.float32) / 255.0)
    assert torch.equal(by_name["cut.png"][0], expected)
    assert torch.equal(by_name["plain.png"], torch.ones(1, 128, 128))


def test_without_masked_loss_batches_carry_no_masks(tmp_path: Path) -> None:
    images, masks = _masked_folder(tmp_path, [(128, 128)])
    plan = _plan([SubsetParams(image_dir=str(images), mask_dir=str(masks))], masked_loss=False)
    assert BucketBatchDataset(plan, batch_size=2, seed=0)[0].masks is None


def test_cached_latents_come_with_their_current_masks(tmp_path: Path) -> None:
    images, masks = _masked_folder(tmp_path, [(128, 128), (200, 70)])
    plan = _plan([SubsetParams(image_dir=str(images), mask_dir=str(masks), flip_aug=True)])
    cache = LatentCache("memory", None, "fake-vae")
    cache.fill(samples(plan), lambda px: F.avg_pool2d(px, 8).repeat(1, 2, 1, 1)[:, :4], flip_aug_keys=True)
    dataset = BucketBatchDataset(plan, batch_size=2, seed=1, latent_cache=cache, masked_loss=True)

    def mask_of(name: str) -> tuple[torch.Tensor, bool]:
        for index in range(len(dataset)):
            batch = dataset[index]
            for key, mask, flipped in zip(batch.keys, batch.masks, batch.flipped):  # type: ignore[arg-type]
                if Path(key).name == name:
                    assert batch.latents is not None and batch.pixels is None
                    return mask, flipped
        raise AssertionError(name)

    mask, flipped = mask_of("img0.png")
    expected = torch.from_numpy(_pattern(128, 128, 0).astype(np.float32) / 255.0)
    assert torch.equal(mask[0], expected.flip(-1) if flipped else expected)
    # a mask edited after caching is what the next batch carries: never a stale one
    Image.fromarray(np.zeros((128, 128), dtype=np.uint8)).save(masks / "img0.png")
    assert torch.equal(mask_of("img0.png")[0], torch.zeros(1, 128, 128))


def test_an_alpha_mask_is_decoded_once_across_epochs_on_cached_latents_and_again_once_edited(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.data.masks as masks_module

    folder = tmp_path / "img"
    folder.mkdir()
    rgba = np.full((128, 128, 4), 200, dtype=np.uint8)
    rgba[:, 64:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "cut.png")
    Image.fromarray(np.full((128, 128, 4), 90, dtype=np.uint8)).save(folder / "faint.png")  # alpha 90 everywhere
    Image.fromarray(np.full((128, 128, 3), 90, dtype=np.uint8)).save(folder / "plain.png")
    plan = _plan([SubsetParams(image_dir=str(folder), alpha_mask=True)], masked_loss=False)
    cache = LatentCache("memory", None, "fake-vae")
    cache.fill(samples(plan), lambda px: F.avg_pool2d(px, 8).repeat(1, 2, 1, 1)[:, :4], flip_aug_keys=False)
    dataset = BucketBatchDataset(plan, batch_size=2, seed=0, latent_cache=cache)
    opened: list[str] = []
    open_upright = masks_module._open_upright

    def counted(path: Path) -> Image.Image:
        opened.append(Path(path).name)
        return open_upright(path)

    monkeypatch.setattr(masks_module, "_open_upright", counted)

    def masks_by_name(epoch: int) -> dict[str, torch.Tensor]:
        found = {}
        for index in range(len(dataset)):
            batch = dataset[epoch, index]
            found.update({Path(key).name: mask for key, mask in zip(batch.keys, batch.masks)})  # type: ignore[arg-type]
        return found

    first, second = masks_by_name(1), masks_by_name(2)
    assert sorted(opened) == ["cut.png", "faint.png", "plain.png"]
    for masks in (first, second):
        assert torch.equal(masks["cut.png"][0], torch.from_numpy(rgba[:, :, 3].astype(np.float32) / 255.0))
        assert torch.allclose(masks["faint.png"], torch.full((1, 128, 128), 90 / 255.0))
        assert torch.equal(masks["plain.png"], torch.ones(1, 128, 128))
    edited = rgba.copy()
    edited[:, :, 3] = 255
    Image.fromarray(edited, "RGBA").save(folder / "cut.png")
    os.utime(folder / "cut.png", ns=(1, 1))  # a stamp of its own, however coarse the file system's clock
    assert torch.equal(masks_by_name(3)["cut.png"], torch.ones(1, 128, 128))
    assert sorted(opened) == ["cut.png", "cut.png", "faint.png", "plain.png"]


def test_missing_masks_stop_the_run_before_it_starts_naming_the_images(tmp_path: Path) -> None:
    images, masks = _masked_folder(tmp_path, [(128, 128), (128, 128), (200, 70)])
    (masks / "img1.png").unlink()
    plan = _plan([SubsetParams(image_dir=str(images), mask_dir=str(masks))])
    with pytest.raises(MaskError, match=r"img1\.png") as error:
        BucketBatchDataset(plan, batch_size=2, seed=0, masked_loss=True)
    assert str(masks) in str(error.value) and "img0.png" not in str(error.value)


def test_a_mask_of_another_size_is_refused_naming_the_mask(tmp_path: Path) -> None:
    images, masks = _masked_folder(tmp_path, [(128, 128)])
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(masks / "img0.png")
    dataset = BucketBatchDataset(_plan([SubsetParams(image_dir=str(images), mask_dir=str(masks))]),
                                 batch_size=2, seed=0, masked_loss=True)
    with pytest.raises(ImageLoadError, match=r"mask.*64x64.*128x128") as error:
        dataset[0]
    assert error.value.path == str(masks / "img0.png")


# ------------------------------------------------------------------ validation


def _config(tmp_path: Path, images: Path, mask_dir: str, masked_loss: bool = True) -> TrainConfig:
    from core.config.schema import DEMO_MODEL

    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.output.output_dir = str(tmp_path / "out")
    config.dataset.masked_loss = masked_loss
    config.dataset.subsets = [SubsetParams(image_dir=str(images), mask_dir=mask_dir)]
    return config


def test_validation_names_images_without_a_mask_and_a_missing_mask_folder(tmp_path: Path) -> None:
    from core.training.validation import ERROR, WARNING, validate

    images, masks = _masked_folder(tmp_path, [(128, 128), (128, 128)])
    assert [p for p in validate(_config(tmp_path, images, str(masks))) if "mask_dir" in p.path] == []
    (masks / "img1.png").unlink()
    problems = [p for p in validate(_config(tmp_path, images, str(masks))) if p.path.endswith("mask_dir")]
    assert [p.severity for p in problems] == [ERROR]
    assert "img1.png" in problems[0].message and "img0.png" not in problems[0].message
    gone = [p for p in validate(_config(tmp_path, images, str(tmp_path / "nowhere"))) if p.path.endswith("mask_dir")]
    assert [p.severity for p in gone] == [ERROR] and "does not exist" in gone[0].message
    unused = [p for p in validate(_config(tmp_path, images, str(masks), masked_loss=False))
              if p.path.endswith("mask_dir")]
    assert [p.severity for p in unused] == [WARNING] and "masked loss is off" in unused[0].message


# ------------------------------------------------------------------ Kohya import and export


def test_kohya_ss_json_masked_loss_and_alpha_mask_are_mapped(tmp_path: Path) -> None:
    import json

    from core.kohya.import_config import import_kohya

    data = json.loads((Path(__file__).parent / "data" / "kohya" / "kohya_ss_lora.json").read_text("utf-8"))
    data.update(masked_loss=True, alpha_mask=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), "utf-8")
    result = import_kohya([path])
    assert result.config.dataset.masked_loss is True
    assert result.config.dataset.subsets and all(s.alpha_mask for s in result.config.dataset.subsets)
    assert not [u for u in result.unsupported if "mask" in u.key]


def test_dataset_toml_conditioning_data_dir_round_trips_through_export(tmp_path: Path) -> None:
    import tomllib

    from core.kohya.export import build_export, write_export
    from core.kohya.import_config import import_kohya

    (tmp_path / "config.toml").write_text(
        'pretrained_model_name_or_path = "model.safetensors"\nmasked_loss = true\n'
        'dataset_config = "dataset.toml"\n', "utf-8")
    (tmp_path / "dataset.toml").write_text(
        '[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'conditioning_data_dir = "masks"\n[[datasets.subsets]]\nimage_dir = "cut"\nalpha_mask = true\n', "utf-8")
    first = import_kohya([tmp_path / "config.toml"])
    assert first.unsupported == []
    data = first.config.dataset
    assert data.masked_loss is True
    assert [(s.mask_dir, s.alpha_mask) for s in data.subsets] == [(str(tmp_path / "masks"), False),
                                                                  ("", True)]
    out = tmp_path / "out"
    exported = build_export(first.config, out)
    args = tomllib.loads(exported.config_toml)
    assert any(section.get("masked_loss") is True for section in args.values() if isinstance(section, dict))
    doc = tomllib.loads(exported.dataset_toml)
    assert "masked_loss" not in doc.get("general", {}) and "masked_loss" not in doc["datasets"][0]
    subsets = doc["datasets"][0]["subsets"]
    assert subsets[0]["conditioning_data_dir"] == str(tmp_path / "masks")
    assert {**doc.get("general", {}), **subsets[1]}["alpha_mask"] is True
    write_export(exported, out)
    again = import_kohya([out / "config.toml"])
    assert again.unsupported == []
    assert again.config.dataset.masked_loss is True
    assert [(s.mask_dir, s.alpha_mask) for s in again.config.dataset.subsets] == [
        (str(tmp_path / "masks"), False), ("", True)]


def test_lora_metadata_says_whether_the_loss_was_masked(tmp_path: Path) -> None:
    from tests.test_lora_metadata import _config as metadata_config, _metadata

    config = metadata_config(tmp_path)
    plan = plan_dataset(config.dataset, config.training)
    assert _metadata(config, plan)["ss_masked_loss"] == "False"
    config.dataset.masked_loss = True
    assert _metadata(config, plan)["ss_masked_loss"] == "True"


def test_check_shows_masked_loss_with_its_mask_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from core.cli.main import main
    from core.config.presets import save_preset

    images, masks = _masked_folder(tmp_path, [(128, 128), (128, 128), (128, 128)])
    (masks / "img2.png").unlink()
    cut = tmp_path / "cut"
    cut.mkdir()
    Image.fromarray(np.zeros((64, 64, 4), dtype=np.uint8), "RGBA").save(cut / "a.png")
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(cut / "b.png")
    config = _config(tmp_path, images, str(masks))
    config.dataset.subsets.append(SubsetParams(image_dir=str(cut), alpha_mask=True))
    preset = tmp_path / "preset.toml"
    save_preset(config, preset)
    main(["check", str(preset)])
    out = capsys.readouterr().out
    assert ("masked loss: on (2 from mask folders, 1 from the alpha channel, 1 trained everywhere, "
            "1 MISSING their mask)") in out
    assert "img2.png" in out  # validation names the image without a mask
    config.dataset.masked_loss = False
    config.dataset.subsets[1].alpha_mask = False
    save_preset(config, preset)
    main(["check", str(preset)])
    assert "masked loss: off" in capsys.readouterr().out


# ------------------------------------------------------------------ a whole run


def test_a_run_with_all_black_masks_trains_on_nothing_and_a_missing_mask_fails_it_by_name(tmp_path: Path) -> None:
    from core.training.engine import Trainer
    from core.training.events import CallbackSink, Failed, Finished, StepMetrics
    from tests.engine_fixtures import tiny_config

    config = tiny_config(tmp_path, steps=2)
    images = Path(config.dataset.subsets[0].image_dir) / "2_kiln"
    masks = tmp_path / "masks"
    masks.mkdir()
    for image in images.glob("*.png"):
        with Image.open(image) as opened:
            Image.new("L", opened.size, 0).save(masks / image.name)
    config.dataset.masked_loss = True
    config.dataset.subsets[0].mask_dir = str(masks)
    events: list = []
    result = Trainer(config, CallbackSink(events.append)).run()
    assert isinstance(result, Finished), getattr(result, "traceback", result)
    assert [e.loss for e in events if isinstance(e, StepMetrics)] == [0.0, 0.0]

    (masks / "img3.png").unlink()
    config.output.output_dir = str(tmp_path / "runs2")
    result = Trainer(config, CallbackSink(events.append)).run()
    assert isinstance(result, Failed) and result.kind == "data" and "img3.png" in result.summary, result
