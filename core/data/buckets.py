"""Aspect-ratio bucketing, number for number as sd-scripts does it.

A user who moves a dataset over from kohya_ss must get the same buckets, the same resized
sizes and the same crops, so every rounding step below (``int(x + .5)``, floor division,
the float comparisons and their tie-breaking) follows sd-scripts' BucketManager rather
than what would be tidier. Everything here is pure arithmetic on image sizes: no pixels,
no I/O, so a dataset of thousands of images plans in milliseconds.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

Size = tuple[int, int]
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class BucketSettings:
    resolution: Size  # (W, H)
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    no_upscale: bool = False


class BucketError(ValueError):
    """The bucket settings cannot work; the message names the setting to change.

    ``field`` is the dataset parameter at fault, so a form can mark it.
    """

    def __init__(self, message: str, field: str = "resolution") -> None:
        super().__init__(message)
        self.field = field


class ImageTooSmall(ValueError):
    """One image cannot be bucketed; the caller skips it and shows this message."""


@dataclass(frozen=True)
class BucketAssignment:
    bucket: Size  # (w, h)
    resized: Size  # size the image is resized to before cropping
    crop: Box  # centre crop box (left, top, right, bottom) in resized coordinates
    ar_error: float  # bucket_w/bucket_h - image_w/image_h, signed as sd-scripts logs it
    upscaled: bool  # resized larger than the original on either side


def _check_resolution(resolution: Size) -> None:
    w, h = resolution
    if w < 1 or h < 1:
        raise BucketError(
            f"resolution {w}x{h} has a side below 1 px: set resolution to a positive "
            "width and height, e.g. 512,512")


def adjusted_limits(s: BucketSettings) -> tuple[int, int]:
    """min/max_bucket_reso snapped to the step (min down, max up) and checked.

    sd-scripts snaps rather than rejects, so a kohya config with e.g. min 250 keeps working;
    the resolution checks are its asserts, turned into messages that say what to change.
    """
    d = s.bucket_reso_steps
    if d < 1:
        raise BucketError(
            f"bucket_reso_steps is {d}: set it to a positive number of pixels (64 is usual)",
            "bucket_reso_steps")
    _check_resolution(s.resolution)
    lo = s.min_bucket_reso - s.min_bucket_reso % d
    hi = s.max_bucket_reso
    if hi % d:
        hi += d - hi % d
    # A minimum below one step snaps to 0, which would make zero-width buckets (and
    # divide by zero in the bucket set): sd-scripts would crash here instead.
    if lo < d:
        raise BucketError(
            f"min_bucket_reso {s.min_bucket_reso} is below bucket_reso_steps ({d}): "
            f"raise min_bucket_reso to at least {d}", "min_bucket_reso")
    if lo > hi:
        raise BucketError(
            f"min_bucket_reso ({lo} after rounding down to a multiple of {d}) is larger than "
            f"max_bucket_reso ({hi} after rounding up): lower min_bucket_reso or raise "
            "max_bucket_reso", "min_bucket_reso")
    w, h = s.resolution
    if min(w, h) < lo:
        raise BucketError(
            f"the resolution's shorter side ({min(w, h)}) is below min_bucket_reso ({lo}): "
            f"lower min_bucket_reso to {min(w, h)} or less, or raise the resolution")
    if max(w, h) > hi:
        raise BucketError(
            f"the resolution's longer side ({max(w, h)}) is above max_bucket_reso ({hi}): "
            f"raise max_bucket_reso to {max(w, h)} or more, or lower the resolution")
    return lo, hi


def _bucket_set(resolution: Size, lo: int, hi: int, d: int) -> list[Size]:
    w, h = resolution
    area = w * h
    square = int(math.sqrt(area) // d) * d
    resos: set[Size] = {(square, square)}
    width = lo
    while width <= hi:
        height = min(hi, int((area // width) // d) * d)
        if height >= lo:
            resos.add((width, height))
            resos.add((height, width))
        width += d
    return sorted(resos)


def predefined_buckets(s: BucketSettings) -> list[Size]:
    """The fixed bucket set an image can land in, sorted as sd-scripts sorts it.

    With bucketing off that is the one (W, H) bucket; in no-upscale mode there is no fixed
    set (buckets are made per image), so the list is empty.
    """
    if not s.enable_bucket:
        _check_resolution(s.resolution)
        return [s.resolution]
    lo, hi = adjusted_limits(s)
    if s.no_upscale:
        return []
    return _bucket_set(s.resolution, lo, hi, s.bucket_reso_steps)


def centre_crop_box(resized: Size, bucket: Size) -> Box:
    """The centred bucket-sized window of the resized image, as sd-scripts trims it."""
    rw, rh = resized
    bw, bh = bucket
    if rw < bw or rh < bh:
        # sd-scripts never pads; an image smaller than its bucket is a planning bug.
        raise ValueError(f"resized size {rw}x{rh} does not cover bucket {bw}x{bh}")
    left = (rw - bw) // 2
    top = (rh - bh) // 2
    return left, top, left + bw, top + bh


def _cover(width: int, height: int, bucket: Size) -> Size:
    """Scale so the image covers the bucket: match the side that leaves overflow to crop."""
    bw, bh = bucket
    if width / height > bw / bh:
        scale = bh / height
    else:
        scale = bw / width
    return int(width * scale + .5), int(height * scale + .5)


def _round_to_steps(x: float, d: int) -> int:
    n = int(x + .5)
    return n - n % d


def _ratio(w: int, h: int) -> float:
    # A candidate whose side rounds to 0 must lose the comparison, not crash it
    # (sd-scripts raises ZeroDivisionError on such extreme aspect ratios).
    return w / h if h else math.inf


def _no_upscale_size(width: int, height: int, area: int, d: int) -> Size:
    if width * height <= area:
        return width, height
    ar = width / height
    rw = math.sqrt(area * ar)
    rh = area / rw
    # Two candidates, snapping either the width or the height to the step; keep the one
    # whose aspect ratio stays closer, preferring the height-fixed one on a tie.
    wa = _round_to_steps(rw, d)
    ar_a = _ratio(wa, _round_to_steps(wa / ar, d))
    hb = _round_to_steps(rh, d)
    ar_b = _ratio(_round_to_steps(hb * ar, d), hb)
    if abs(ar_a - ar) < abs(ar_b - ar):
        return wa, int(wa / ar + .5)
    return int(hb * ar + .5), hb


class BucketAssigner:
    """Assigns images to buckets for one set of settings.

    The settings are checked and the bucket set is built once here, so that planning a
    large dataset only pays for the per-image arithmetic.
    """

    def __init__(self, s: BucketSettings) -> None:
        self.settings = s
        self._buckets = predefined_buckets(s)
        self._bucket_set = frozenset(self._buckets)
        # Distinct bucket aspect ratios in ascending order, each with the position of the
        # first bucket (in sorted bucket order) that has it, for a binary search.
        first_with_ratio: dict[float, int] = {}
        for i, (w, h) in enumerate(self._buckets):
            first_with_ratio.setdefault(w / h, i)
        self._ratios = sorted(first_with_ratio)
        self._first_index = [first_with_ratio[r] for r in self._ratios]
        self._on_demand = s.enable_bucket and s.no_upscale
        self._area = s.resolution[0] * s.resolution[1]

    @property
    def buckets(self) -> list[Size]:
        """The predefined buckets (empty in no-upscale mode, where they are made per image)."""
        return list(self._buckets)

    def assign(self, width: int, height: int) -> BucketAssignment:
        if width < 1 or height < 1:
            raise ImageTooSmall(f"image size {width}x{height} has no pixels")
        if self._on_demand:
            resized = _no_upscale_size(width, height, self._area, self.settings.bucket_reso_steps)
            bucket = self._snap_down(resized, width, height)
        else:
            bucket = self._nearest_bucket(width, height)
            resized = _cover(width, height, bucket)
        return BucketAssignment(
            bucket=bucket,
            resized=resized,
            crop=centre_crop_box(resized, bucket),
            ar_error=bucket[0] / bucket[1] - width / height,
            upscaled=resized[0] > width or resized[1] > height,
        )

    def _nearest_bucket(self, width: int, height: int) -> Size:
        # An image already at a bucket size goes there, even if another bucket shares its
        # aspect ratio; otherwise the first bucket (sorted order) with the smallest error,
        # which is what numpy's argmin picks in sd-scripts.
        if (width, height) in self._bucket_set:
            return width, height
        ar = width / height
        ratios = self._ratios
        # Float subtraction is monotonic, so |r - ar| never decreases moving away from ar on
        # either side: the minimum sits next to the insertion point, and any bucket tying
        # with it lies in an unbroken run outward from there. Walking those runs gives the
        # same answer as scanning every bucket, in a few comparisons.
        pos = bisect_left(ratios, ar)
        tied: list[int] = []
        best = math.inf
        for start, step in ((pos, 1), (pos - 1, -1)):
            k = start
            if not 0 <= k < len(ratios):
                continue
            side_min = abs(ratios[k] - ar)
            if side_min > best:
                continue
            if side_min < best:
                best, tied = side_min, []
            while 0 <= k < len(ratios) and abs(ratios[k] - ar) == side_min:
                tied.append(self._first_index[k])
                k += step
        return self._buckets[min(tied)]

    def _snap_down(self, resized: Size, width: int, height: int) -> Size:
        d = self.settings.bucket_reso_steps
        bw = resized[0] - resized[0] % d
        bh = resized[1] - resized[1] % d
        if bw == 0 or bh == 0:
            raise ImageTooSmall(
                f"image {width}x{height} would be {resized[0]}x{resized[1]} after resizing, "
                f"smaller than the bucket step ({d} px) on one side, so no bucket fits it")
        return bw, bh
