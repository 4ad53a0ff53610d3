"""One training sample: an image of the plan with its bucket, its subset's options and its
loss weight, and how its pixels load. The pipeline batches samples and the latent cache
encodes them; both build on this, so neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.config.schema import SubsetParams
from core.data.buckets import BucketAssignment
from core.data.dataset_plan import DatasetPlan
from core.data.images import ImageLoadError, load_rgb, prepare, to_tensor
from core.data.scan import ImageRecord


@dataclass(frozen=True)
class Sample:
    """What one batch element needs, resolved once from the plan."""

    key: str  # str(record.path)
    record: ImageRecord
    assignment: BucketAssignment
    options: SubsetParams  # the options of the image's subset
    loss_weight: float  # prior_loss_weight for regularisation images, else 1.0


def samples(plan: DatasetPlan, prior_loss_weight: float = 1.0) -> list[Sample]:
    """One sample per planned image, in plan order."""
    result = []
    for image in plan.images:
        record = image.record
        result.append(Sample(
            key=str(record.path), record=record, assignment=image.assignment,
            options=plan.subsets[record.subset_index].params,
            loss_weight=prior_loss_weight if record.is_reg else 1.0))
    return result


def load_pixels(sample: Sample, crop_offset: tuple[int, int] | None, flip: bool) -> torch.Tensor:
    """One sample's [3, H, W] pixels in [-1, 1], at its bucket's size."""
    image = load_rgb(sample.record.path)
    if image.size != sample.record.size:
        w, h = image.size
        pw, ph = sample.record.size
        raise ImageLoadError(sample.record.path, f"it is {w}x{h} now but was {pw}x{ph} when the "
                                                 "dataset was planned; plan the dataset again")
    return to_tensor(prepare(image, sample.assignment, crop_offset, flip))
