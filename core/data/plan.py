"""The dataset plan: which image goes to which bucket, how many batches and steps.

This is the one computation of those numbers: the Dataset tab shows it, ``lorakiln plan``
prints it and the trainer trains by it, so the step count a person reads before training
is the step count the run reaches. Scanning (file headers) is separate from planning
(pure arithmetic), so a change of resolution or batch size re-plans without touching disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.data.batching import (PlannedImage, batches_per_epoch, bucket_counts, plan_steps,
                           register_regularisation)
from core.data.buckets import BucketAssigner, BucketAssignment, BucketSettings, ImageTooSmall
from core.config.schema import DatasetParams, Duration, TrainingParams
from core.data.scan import ImageRecord, ScanResult, SkippedFile, scan_dataset
from core.data.dataset_plan import DatasetPlan, PlanImage
from core.data.plan_report import header_checked, plan_warnings
from core.data.validation_split import empty_split_message, split_validation, validation_seed

def bucket_settings(data: DatasetParams) -> BucketSettings:
    """The bucketing arguments of a dataset's parameters."""
    return BucketSettings(resolution=data.resolution, enable_bucket=data.enable_bucket,
                          min_bucket_reso=data.min_bucket_reso, max_bucket_reso=data.max_bucket_reso,
                          bucket_reso_steps=data.bucket_reso_steps, no_upscale=data.bucket_no_upscale)


def plan_from_scan(scan: ScanResult, data: DatasetParams, training: TrainingParams,
                   num_processes: int = 1) -> DatasetPlan:
    """Plan a scanned dataset; pure arithmetic, raises BucketError for impossible settings."""
    settings = bucket_settings(data)
    assigner = BucketAssigner(settings)
    skipped = list(scan.skipped)
    records, held_out = split_validation(scan.images, 0.0 if data.validation_dir else data.validation_split,
                                         validation_seed(data.validation_seed, training.seed))
    held_out = held_out + scan.validation_images
    validation: list[PlanImage] = []
    for record in held_out:
        try:
            validation.append(PlanImage(record, assigner.assign(*record.size), 1))
        except ImageTooSmall as err:
            skipped.append(SkippedFile(record.path, record.display_path, str(err)))
    assigned: list[tuple[ImageRecord, BucketAssignment]] = []
    for record in records:
        try:
            assigned.append((record, assigner.assign(*record.size)))
        except ImageTooSmall as err:
            skipped.append(SkippedFile(record.path, record.display_path, str(err)))

    train = [(r, a) for r, a in assigned if not r.is_reg]
    num_train = sum(r.num_repeats for r, _ in train)
    images = [PlanImage(r, a, r.num_repeats) for r, a in train if r.num_repeats > 0]
    reg = [(r, a) for r, a in assigned if r.is_reg]
    registered = dict(register_regularisation(num_train, [(str(r.path), r.num_repeats) for r, _ in reg]))
    num_reg = 0
    for record, assignment in reg:
        repeats = registered.get(str(record.path))
        if repeats is None:
            reason = ("regularisation image not needed: the regularisation images before it already "
                      f"match the {num_train} training images (with repeats), as in Kohya")
            if num_train == 0:
                reason = "regularisation image unused: there are no training images"
            skipped.append(SkippedFile(record.path, record.display_path, reason))
            continue
        images.append(PlanImage(record, assignment, repeats))
        num_reg += repeats

    counts = bucket_counts(PlannedImage(str(i.record.path), i.bucket, i.repeats, i.record.is_reg)
                           for i in images)
    counts = dict(sorted(counts.items()))
    steps = None
    if counts:
        n_batches = batches_per_epoch(counts, training.batch_size)
        by_epochs = training.duration is Duration.EPOCHS
        steps = plan_steps(n_batches,
                           epochs=training.max_train_epochs if by_epochs else None,
                           max_train_steps=None if by_epochs else training.max_train_steps,
                           grad_accum=training.gradient_accumulation_steps,
                           num_processes=num_processes)
    plan = DatasetPlan(settings=settings, batch_size=training.batch_size, images=images,
                       skipped=skipped, buckets=counts, steps=steps, num_train_images=num_train,
                       num_reg_images=num_reg, subsets=list(scan.subsets),
                       scan_warnings=list(scan.warnings), max_token_length=training.max_token_length,
                       validation=validation)
    plan.warnings, plan.notes = plan_warnings(plan)
    if validation:
        source = (f"the validation folder {data.validation_dir}" if data.validation_dir
                  else f"validation_split {data.validation_split:g} of each training folder")
        plan.notes.insert(0, f"{len(validation)} images held out for validation ({source}); "
                             "they are never trained on")
    elif not data.validation_dir:
        sizes: dict[int, int] = {}
        for record in scan.images:
            if not record.is_reg:
                sizes[record.subset_index] = sizes.get(record.subset_index, 0) + 1
        empty = empty_split_message(list(sizes.values()), data.validation_split)
        if empty:
            plan.warnings.append(empty)
    return plan


def plan_dataset(data: DatasetParams, training: TrainingParams, *, base_dir: Path | None = None,
                 num_processes: int = 1, cancelled: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> DatasetPlan:
    """Scan and plan in one call (what the CLI and the trainer use)."""
    scan = scan_dataset(data, base_dir=base_dir, cancelled=cancelled, progress=progress)
    return plan_from_scan(scan, data, training, num_processes)


def plan_to_json(plan: DatasetPlan) -> dict:
    """The plan as ``lorakiln plan --json`` prints it."""
    return {
        "buckets": [{"resolution": list(bucket), "count": count} for bucket, count in plan.buckets.items()],
        "images": [{"path": i.record.display_path, "size": list(i.record.size), "bucket": list(i.bucket),
                    "resized": list(i.assignment.resized), "repeats": i.repeats} for i in plan.images],
        "skipped": [{"path": s.display_path, "reason": s.reason} for s in plan.skipped],
        "validation": [i.record.display_path for i in plan.validation],
        "batches_per_epoch": plan.batches_per_epoch,
        "epochs": plan.steps.epochs if plan.steps else 0,
        "max_train_steps": plan.steps.max_train_steps if plan.steps else 0,
        "warnings": plan.scan_warnings + plan.warnings,
        "header_checked": header_checked(plan),  # images checked by their headers only, never decoded
    }
