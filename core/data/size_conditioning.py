"""SDXL's size and crop conditioning ("time ids"), number for number as sd-scripts makes it.

SDXL's U-Net takes, besides the text, six numbers per image: (original height, original
width, crop top, crop left, target height, target width). A LoRA trained with other numbers
than the ones kohya's sd-scripts feeds learns a slightly different conditioning, so these
follow sd-scripts (kohya-ss/sd-scripts at 48d368fa, library/train_util.py:
``BucketManager.get_crop_ltrb`` lines 349-366, ``trim_and_resize_if_required`` lines
2965-2993, and ``BaseDataset.__getitem__`` lines 1683-1693; unchanged since commit 0ec71660
of July 2023), including where they are not what one would guess:

- the crop is not the window that was cut out of the resized image. sd-scripts fits the
  *whole* image inside the bucket (Stability AI's preprocessing) and reports the margins of
  that fit: a landscape image in a square bucket gets a crop *top* and a left of 0, although
  its pixels were cropped left and right;
- a random crop does not change it (sd-scripts: "I have no idea how to reflect the cropped
  value in crop left/top in the case of random crop"), so it depends only on the image's size
  and its bucket, and cached latents need nothing stored beside them;
- a flipped image's crop left is measured from the right edge of that fit,
  ``target width - crop right``, truncated to an integer like every value.

The original size is the image's size before resizing, upright (after its EXIF orientation,
as everything in core.data; sd-scripts reads images without EXIF rotation, so the two differ
only for rotated photos, whose pixels also differ). The target size is the size of the
trained pixels: the bucket, or the latents' size times the VAE's downscale.

Pure arithmetic without torch. core.models lies under this layer and cannot import it: a
family reads the rows from core.data.pipeline.Batch.size_conditioning, and code above (the
trainer's sampling) can hand it sampling_time_ids.
"""

from __future__ import annotations

Size = tuple[int, int]  # (w, h), as everywhere in core.data
TimeIds = tuple[int, int, int, int, int, int]  # (orig h, orig w, crop top, crop left, target h, target w)


def crop_ltrb(bucket: Size, image: Size) -> tuple[float, float, float, float]:
    """sd-scripts' (left, top, right, bottom) for an image of size ``image`` in ``bucket``:
    the margins of the image scaled to fit inside the bucket. Floats, exactly as sd-scripts
    computes them (the same expressions, so the same roundings)."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image[0] / image[1]
    if bucket_ar > image_ar:
        # The bucket is wider: the fitted image spans its height.
        fitted_w: float = bucket[1] * image_ar
        fitted_h: float = bucket[1]
    else:
        fitted_w = bucket[0]
        fitted_h = bucket[0] / image_ar
    left = (bucket[0] - fitted_w) // 2
    top = (bucket[1] - fitted_h) // 2
    return left, top, left + fitted_w, top + fitted_h


def time_ids(original: Size, crop_top_left: tuple[float, float], target: Size) -> TimeIds:
    """The six numbers for an image of size ``original`` = (w, h), cropped at ``crop_top_left``
    = (top, left), trained at ``target`` = (w, h); integers, truncated as sd-scripts does."""
    top, left = crop_top_left
    return (int(original[1]), int(original[0]), int(top), int(left), int(target[1]), int(target[0]))


def sampling_time_ids(width: int, height: int) -> TimeIds:
    """What to ask a model for when generating a ``width`` x ``height`` image: an uncropped
    image of that size (diffusers' SDXL pipeline uses the same by default)."""
    return time_ids((width, height), (0, 0), (width, height))


def training_time_ids(image: Size, bucket: Size, flipped: bool, target: Size | None = None) -> TimeIds:
    """The time ids of one training image of size ``image`` (before resizing, upright) planned
    into ``bucket``, mirrored or not; ``target`` is the trained size when it is not the bucket
    (latents of a bucket that is not a multiple of the VAE's downscale)."""
    target = bucket if target is None else target
    left, top, right, _ = crop_ltrb(bucket, image)
    if flipped:
        # The mirrored image's left margin is the unmirrored one's right margin.
        left = target[0] - right
    return time_ids(image, (top, left), target)
