"""Aspect-ratio bucketing must give sd-scripts' numbers exactly (kohya-behaviour.md §2)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from core.data.buckets import (
    BucketAssigner,
    BucketError,
    BucketSettings,
    ImageTooSmall,
    adjusted_limits,
    centre_crop_box,
    predefined_buckets,
)

SD15 = BucketSettings(resolution=(512, 512))
NO_UPSCALE = BucketSettings(resolution=(512, 512), no_upscale=True)


# --- limits -------------------------------------------------------------------------------

def test_limits_already_on_the_step_are_kept() -> None:
    assert adjusted_limits(SD15) == (256, 1024)


def test_min_is_rounded_down_and_max_up_to_the_step() -> None:
    s = BucketSettings((512, 512), min_bucket_reso=250, max_bucket_reso=1000)
    assert adjusted_limits(s) == (192, 1024)


def test_resolution_below_min_bucket_reso_names_the_setting() -> None:
    s = BucketSettings((512, 512), min_bucket_reso=576)
    with pytest.raises(BucketError, match="min_bucket_reso"):
        adjusted_limits(s)


def test_resolution_above_max_bucket_reso_names_the_setting() -> None:
    s = BucketSettings((1280, 512), max_bucket_reso=1024)
    with pytest.raises(BucketError, match="max_bucket_reso"):
        adjusted_limits(s)


def test_min_above_max_is_an_error() -> None:
    s = BucketSettings((512, 512), min_bucket_reso=1024, max_bucket_reso=512)
    with pytest.raises(BucketError, match="larger than max_bucket_reso"):
        adjusted_limits(s)


def test_step_below_one_is_an_error() -> None:
    with pytest.raises(BucketError, match="bucket_reso_steps"):
        adjusted_limits(BucketSettings((512, 512), bucket_reso_steps=0))


def test_min_that_rounds_down_to_zero_is_an_error() -> None:
    with pytest.raises(BucketError, match="min_bucket_reso"):
        adjusted_limits(BucketSettings((512, 512), min_bucket_reso=32))


def test_limits_are_checked_in_no_upscale_mode_too() -> None:
    # sd-scripts asserts them whenever bucketing is on, even though no-upscale ignores them.
    with pytest.raises(BucketError, match="max_bucket_reso"):
        BucketAssigner(BucketSettings((2048, 2048), no_upscale=True))


# --- the predefined set -------------------------------------------------------------------

def test_sd15_defaults_give_the_17_sd_scripts_buckets() -> None:
    assert predefined_buckets(SD15) == [
        (256, 832), (256, 896), (256, 960), (256, 1024),
        (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320),
        (832, 256), (896, 256), (960, 256), (1024, 256),
    ]


def test_bucket_sides_are_multiples_of_the_step_and_within_the_limits() -> None:
    s = BucketSettings((768, 1024), min_bucket_reso=320, max_bucket_reso=1536, bucket_reso_steps=32)
    for w, h in predefined_buckets(s):
        assert w % 32 == 0 and h % 32 == 0
        assert 320 <= w <= 1536 and 320 <= h <= 1536
        assert w * h <= 768 * 1024


def test_bucketing_off_has_exactly_the_resolution_as_its_bucket() -> None:
    assert predefined_buckets(BucketSettings((512, 768), enable_bucket=False)) == [(512, 768)]


def test_no_upscale_mode_has_no_predefined_buckets() -> None:
    assert predefined_buckets(NO_UPSCALE) == []


# --- predefined assignment ----------------------------------------------------------------

def test_an_image_at_a_bucket_size_goes_to_that_bucket_unchanged() -> None:
    a = BucketAssigner(SD15).assign(640, 384)
    assert a.bucket == (640, 384)
    assert a.resized == (640, 384)
    assert a.crop == (0, 0, 640, 384)
    assert a.ar_error == 0.0
    assert not a.upscaled


def test_a_large_square_image_is_scaled_down_to_the_square_bucket() -> None:
    a = BucketAssigner(SD15).assign(862, 862)
    assert (a.bucket, a.resized, a.crop) == ((512, 512), (512, 512), (0, 0, 512, 512))
    assert not a.upscaled


def test_a_5_to_3_image_lands_in_the_640x384_bucket() -> None:
    # 1000/600 == 640/384 as floats, so image_ar > bucket_ar is false: scale = 640/1000 = 0.64
    # and the height becomes int(600 * 0.64 + .5) = 384, nothing to crop.
    a = BucketAssigner(SD15).assign(1000, 600)
    assert (a.bucket, a.resized, a.crop) == ((640, 384), (640, 384), (0, 0, 640, 384))


def test_a_portrait_is_scaled_to_cover_its_bucket_and_centre_cropped() -> None:
    # ar 1/3 = 0.3333; nearest bucket 256x832 (0.3077, error 0.0256; next 320x704 is 0.4545).
    # Image wider than the bucket, so the height is matched: scale = 832/900,
    # width int(300 * 0.92444 + .5) = int(277.83) = 277; overflow 21 px -> left = 10.
    a = BucketAssigner(SD15).assign(300, 900)
    assert a.bucket == (256, 832)
    assert a.resized == (277, 832)
    assert a.crop == (10, 0, 266, 832)
    assert a.ar_error == pytest.approx(256 / 832 - 300 / 900)
    assert a.ar_error < 0


def test_a_4_to_3_photo_matches_height_and_crops_the_sides() -> None:
    # ar 1.3333 -> bucket 576x448 (1.2857). scale = 448/3000, width int(597.33 + .5) = 597,
    # left = (597 - 576) // 2 = 10.
    a = BucketAssigner(SD15).assign(4000, 3000)
    assert (a.bucket, a.resized, a.crop) == ((576, 448), (597, 448), (10, 0, 586, 448))


def test_a_small_image_is_upscaled_in_predefined_mode() -> None:
    a = BucketAssigner(SD15).assign(100, 100)
    assert a.resized == (512, 512)
    assert a.upscaled


def test_an_aspect_ratio_tie_goes_to_the_first_bucket_in_sorted_order() -> None:
    # 2700/800 = 3.375 lies exactly between 832/256 = 3.25 and 896/256 = 3.5; all three are
    # exact binary fractions, so both errors are exactly 0.125 and argmin takes the first.
    a = BucketAssigner(SD15).assign(2700, 800)
    assert a.bucket == (832, 256)


def _sizes_to_probe(buckets: list[tuple[int, int]], seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = [(rng.randint(64, 4096), rng.randint(64, 4096)) for _ in range(2000)]
    sizes += buckets
    # Images whose aspect ratio is exactly halfway between two buckets' (ties), or
    # exactly a bucket's at another size.
    for (w1, h1) in buckets:
        sizes.append((w1 * 3, h1 * 3))
        for (w2, h2) in buckets:
            sizes.append((w1 * h2 + w2 * h1, 2 * h1 * h2))
    return sizes


@pytest.mark.parametrize("settings", [
    SD15,
    BucketSettings((1024, 1024), max_bucket_reso=2048),
    BucketSettings((768, 512), min_bucket_reso=320, max_bucket_reso=1280, bucket_reso_steps=32),
], ids=["sd15", "sdxl-2048", "768x512-step32"])
def test_nearest_bucket_is_numpy_argmin_over_the_bucket_list(settings: BucketSettings) -> None:
    # sd-scripts scans every bucket with numpy; the assigner's binary search must agree,
    # ties included.
    buckets = predefined_buckets(settings)
    ratios = np.array([w / h for w, h in buckets])
    assigner = BucketAssigner(settings)
    for w, h in _sizes_to_probe(buckets, seed=0):
        if (w, h) in buckets:
            expected = (w, h)
        else:
            expected = buckets[int(np.abs(ratios - w / h).argmin())]
        assert assigner.assign(w, h).bucket == expected, (w, h)


def test_the_resized_image_always_covers_its_bucket() -> None:
    assigner = BucketAssigner(SD15)
    rng = random.Random(1)
    for _ in range(2000):
        w, h = rng.randint(1, 5000), rng.randint(1, 5000)
        a = assigner.assign(w, h)
        assert a.resized[0] >= a.bucket[0] and a.resized[1] >= a.bucket[1]
        # Cover means one side fits exactly; only the other is cropped.
        assert a.resized[0] == a.bucket[0] or a.resized[1] == a.bucket[1]


# --- no-upscale ---------------------------------------------------------------------------

def test_no_upscale_keeps_a_small_image_and_rounds_its_bucket_down() -> None:
    a = BucketAssigner(NO_UPSCALE).assign(300, 200)
    assert a.resized == (300, 200)
    assert a.bucket == (256, 192)
    assert a.crop == (22, 4, 278, 196)
    assert not a.upscaled


def test_no_upscale_fixes_the_width_when_that_keeps_the_aspect_ratio_closer() -> None:
    # 1200x1600, ar 0.75, A = 262144: rw = sqrt(A * 0.75) = 443.41, rh = A / rw = 591.21.
    # (a) wa = R(443.41) = 443 - 443 % 64 = 384, R(384 / 0.75 = 512) = 512 -> ar 0.75, error 0.
    # (b) hb = R(591.21) = 576, R(576 * 0.75 = 432) = 384 -> ar 0.6667, error 0.0833.
    # (a) wins: resized = (384, int(512 + .5)) = (384, 512).
    a = BucketAssigner(NO_UPSCALE).assign(1200, 1600)
    assert a.resized == (384, 512)
    assert a.bucket == (384, 512)


def test_no_upscale_fixes_the_height_when_that_keeps_the_aspect_ratio_closer() -> None:
    # 1600x1200, ar 1.3333: rw = 591.21, rh = 443.41.
    # (a) wa = R(591.21) = 576, R(576 / 1.3333 = 432) = 384 -> ar 1.5, error 0.1667.
    # (b) hb = R(443.41) = 384, R(384 * 1.3333 = 512) = 512 -> ar 1.3333, error 0.
    # (b) wins: resized = (int(512 + .5), 384) = (512, 384).
    a = BucketAssigner(NO_UPSCALE).assign(1600, 1200)
    assert a.resized == (512, 384)
    assert a.bucket == (512, 384)


def test_no_upscale_tie_between_candidates_fixes_the_height() -> None:
    # 570x900, ar 0.6333: rw = 407.46, rh = 643.35.
    # (a) wa = 384, R(384 / 0.6333 = 606.3) = 576 -> ar 0.6667, error 0.0333.
    # (b) hb = 640, R(640 * 0.6333 = 405.3) = 384 -> ar 0.6,    error 0.0333 (same float).
    # (a) needs to be strictly closer, so (b): resized = (int(405.33 + .5), 640) = (405, 640).
    a = BucketAssigner(NO_UPSCALE).assign(570, 900)
    assert a.resized == (405, 640)
    assert a.bucket == (384, 640)
    assert a.crop == (10, 0, 394, 640)


def test_no_upscale_never_enlarges() -> None:
    assigner = BucketAssigner(NO_UPSCALE)
    rng = random.Random(2)
    for _ in range(2000):
        w, h = rng.randint(64, 4000), rng.randint(64, 4000)
        try:
            a = assigner.assign(w, h)
        except ImageTooSmall:
            continue
        assert not a.upscaled
        assert a.bucket[0] % 64 == 0 and a.bucket[1] % 64 == 0


def test_no_upscale_image_narrower_than_the_step_is_too_small() -> None:
    with pytest.raises(ImageTooSmall, match="smaller than the bucket step"):
        BucketAssigner(NO_UPSCALE).assign(50, 300)


def test_no_upscale_extreme_aspect_ratio_is_too_small_not_a_crash() -> None:
    # Both candidates round a side to 0 (sd-scripts divides by zero here).
    with pytest.raises(ImageTooSmall):
        BucketAssigner(NO_UPSCALE).assign(100_000, 10)


def test_too_small_is_not_a_settings_error() -> None:
    assert not issubclass(ImageTooSmall, BucketError)
    assert issubclass(ImageTooSmall, ValueError)


def test_an_image_without_pixels_is_too_small() -> None:
    with pytest.raises(ImageTooSmall):
        BucketAssigner(SD15).assign(0, 512)


# --- bucketing off ------------------------------------------------------------------------

def test_bucketing_off_scales_to_cover_the_resolution_and_centre_crops() -> None:
    s = BucketSettings((512, 768), enable_bucket=False)
    a = BucketAssigner(s).assign(1000, 1000)
    assert a.bucket == (512, 768)
    assert a.resized == (768, 768)
    assert a.crop == (128, 0, 640, 768)


def test_bucketing_off_ignores_the_bucket_limits() -> None:
    s = BucketSettings((2048, 2048), enable_bucket=False, max_bucket_reso=1024)
    assert BucketAssigner(s).assign(4096, 2048).bucket == (2048, 2048)


def test_bucketing_off_ignores_no_upscale() -> None:
    s = BucketSettings((512, 512), enable_bucket=False, no_upscale=True)
    a = BucketAssigner(s).assign(256, 256)
    assert a.bucket == (512, 512) and a.upscaled


# --- crop helper and speed ----------------------------------------------------------------

def test_centre_crop_puts_the_odd_pixel_on_the_right() -> None:
    assert centre_crop_box((597, 448), (576, 448)) == (10, 0, 586, 448)


def test_centre_crop_refuses_a_resized_image_smaller_than_its_bucket() -> None:
    with pytest.raises(ValueError):
        centre_crop_box((500, 512), (512, 512))
