"""What a dataset plan is: each image with its bucket, resize, crop and repeats, and the
plan's totals, warnings and notes. :mod:`core.data.plan` computes it and
:mod:`core.data.plan_report` words it; both read this, neither imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.data.batching import StepPlan
from core.data.buckets import BucketAssignment, BucketSettings
from core.data.scan import ImageRecord, ResolvedSubset, SkippedFile

Bucket = tuple[int, int]


@dataclass(frozen=True)
class PlanImage:
    """One image as it will be trained: its bucket, resize and crop, and its repeats."""

    record: ImageRecord
    assignment: BucketAssignment
    repeats: int  # per epoch; for regularisation images after Kohya's round-robin top-up

    @property
    def bucket(self) -> Bucket:
        return self.assignment.bucket


@dataclass
class DatasetPlan:
    settings: BucketSettings
    batch_size: int
    images: list[PlanImage]
    skipped: list[SkippedFile]
    buckets: dict[Bucket, int]  # entries per bucket, repeats included, sorted by resolution
    steps: StepPlan | None  # None when there is nothing to train on
    num_train_images: int  # training images with repeats (what reg images are matched to)
    num_reg_images: int  # regularisation images with their effective repeats
    subsets: list[ResolvedSubset] = field(default_factory=list)  # ImageRecord.subset_index indexes this
    scan_warnings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth seeing that are not problems
    max_token_length: int = 75  # caption tokens that reach the text encoder (training.max_token_length)
    # Images held out for the validation loss (a split, or dataset.validation_dir): never trained.
    validation: list[PlanImage] = field(default_factory=list)

    @property
    def batches_per_epoch(self) -> int:
        return self.steps.batches_per_epoch if self.steps else 0

    def bucket_members(self) -> dict[Bucket, list[str]]:
        """Image paths per bucket, one entry per repeat, for the epoch batch order."""
        members: dict[Bucket, list[str]] = {}
        for image in self.images:
            members.setdefault(image.bucket, []).extend([str(image.record.path)] * image.repeats)
        return members

    @property
    def mean_ar_error(self) -> float:
        """Mean |bucket aspect ratio - image aspect ratio| over images, as sd-scripts logs it."""
        if not self.images:
            return 0.0
        return sum(abs(i.assignment.ar_error) for i in self.images) / len(self.images)
