"""What a person needs to know about a plan: warnings, notes, and the printed table.

These are the facts that the resolution comparisons users run turn on: how many buckets
the resolution splits the data into, which batches come out short, which images are
enlarged or cropped hard, and why the step count is what it is.
"""

from __future__ import annotations

import math

from core.config.schema import MAX_TOKEN_LENGTHS
from core.data.dataset_plan import DatasetPlan
from core.data.images import conversion_note
from core.system.words import agree, count as count_of

SHOW_AT_MOST = 5


def _name(image) -> str:  # noqa: ANN001 - PlanImage
    return image.record.path.name


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOW_AT_MOST])
    return shown + (f" and {len(items) - SHOW_AT_MOST} more" if len(items) > SHOW_AT_MOST else "")


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def cropped_fraction(image) -> float:  # noqa: ANN001 - PlanImage
    (rw, rh), (bw, bh) = image.assignment.resized, image.bucket
    return 1.0 - (bw * bh) / (rw * rh)


def header_checked(plan: DatasetPlan) -> int:
    """How many files the plan uses, each checked by its header and ending, never decoded."""
    return len({image.record.path for image in plan.images})


# A caption past this many characters is far beyond the 75 tokens (a few hundred
# characters) that reach the text encoder: most likely a mistake, and a slow one.
LONG_CAPTION_CHARS = 2000


def _caption_name(plan: DatasetPlan, image) -> str:  # noqa: ANN001 - PlanImage
    if image.record.caption_source != "file":
        return _name(image)
    extension = plan.subsets[image.record.subset_index].params.caption_extension
    extension = extension if extension.startswith(".") else "." + extension
    return f"{image.record.path.stem}{extension}"


def token_limit_warning(plan: DatasetPlan) -> str | None:
    """The warning for captions of more tokens than reach the text encoder, naming the longest."""
    from core.data.caption_tokens import COUNTED_CHARACTERS, captions_over

    limit = plan.max_token_length
    over = captions_over((i.record.caption for i in plan.images), limit)
    if not over:
        return None
    images = sorted((i for i in plan.images if i.record.caption in over),
                    key=lambda i: (-over[i.record.caption], str(i.record.path)))
    names = []
    for image in images:
        caption = image.record.caption
        count = f"at least {over[caption]:,}" if len(caption) > COUNTED_CHARACTERS else f"{over[caption]:,}"
        names.append(f"{_caption_name(plan, image)} ({count} tokens)")
    longer = [n for n in MAX_TOKEN_LENGTHS if n > limit]
    advice = (f"set training.max_token_length to {' or '.join(str(n) for n in longer)} (sd-scripts' "
              "--max_token_length) or shorten these captions" if longer else "shorten these captions")
    return (f"{count_of(len(images), 'image')} {agree(len(images), 'has a caption', 'have captions')}"
            f" longer than {limit} tokens, the most that reach the text "
            f"encoder (training.max_token_length): {_listing(names)}. The tokens past {limit} never train; "
            + advice)


def long_caption_warning(plan: DatasetPlan) -> str | None:
    """The warning for captions longer than LONG_CAPTION_CHARS, naming their files."""
    long = [(len(i.record.caption), i) for i in plan.images
            if len(i.record.caption) > LONG_CAPTION_CHARS and i.record.caption_source == "file"]
    if not long:
        return None
    long.sort(key=lambda pair: -pair[0])
    names = []
    for length, image in long:
        extension = plan.subsets[image.record.subset_index].params.caption_extension
        extension = extension if extension.startswith(".") else "." + extension
        names.append(f"{image.record.path.stem}{extension} ({length:,} characters)")
    return (f"{count_of(len(long), 'caption')} {agree(len(long), 'is', 'are')}"
            f" longer than {LONG_CAPTION_CHARS:,} characters: {_listing(names)}. "
            f"Only the first {plan.max_token_length} tokens of a caption (a few hundred characters) reach "
            "the text encoder, so "
            "the rest never trains; yet the whole text is tokenised (and shuffled or dropped tag by tag, "
            "if those options are on) every time the image is drawn, which slows the steps. Shorten these "
            "captions, or check that they are the right files")


def plan_warnings(plan: DatasetPlan) -> tuple[list[str], list[str]]:
    """(warnings, notes) for a plan."""
    warnings: list[str] = []
    notes: list[str] = []
    if not plan.images:
        warnings.append("no usable images: nothing can be trained")
        return warnings, notes
    s, batch = plan.settings, plan.batch_size
    distinct: dict[tuple[int, int], list] = {}
    for image in plan.images:
        distinct.setdefault(image.bucket, []).append(image)

    mode = ("bucketing off" if not s.enable_bucket else
            "no upscaling" if s.no_upscale else f"buckets {s.min_bucket_reso}-{s.max_bucket_reso}")
    notes.append(f"{count_of(len(plan.images), 'image')} ({plan.num_train_images + plan.num_reg_images} with repeats) "
                 f"{agree(len(plan.images), 'falls', 'fall')}"
                 f" into {count_of(len(plan.buckets), 'bucket')} at {_wxh(s.resolution)} "
                 f"({mode}, step {s.bucket_reso_steps})")

    if batch > 1:
        small = [f"{_wxh(b)} ({n})" for b, n in plan.buckets.items() if n < batch]
        if small:
            warnings.append(f"{count_of(len(small), 'bucket')} {agree(len(small), 'holds', 'hold')}"
                            f" fewer images than the batch size {batch}, so "
                            f"their batches are smaller: {_listing(small)}")
        short = sum(1 for n in plan.buckets.values() if n % batch)
        total = sum(plan.buckets.values())
        naive = math.ceil(total / batch)
        if plan.batches_per_epoch != naive:
            notes.append(f"batches never mix buckets: {count_of(plan.batches_per_epoch, 'batch', 'batches')}"
                         f" per epoch, "
                         f"not {total}/{batch} rounded up = {naive}; {short} of them {agree(short, 'is', 'are')} short")
    single = [f"{_wxh(b)} ({_name(imgs[0])})" for b, imgs in distinct.items() if len(imgs) == 1]
    if single:
        warnings.append(f"{count_of(len(single), 'bucket')} {agree(len(single), 'holds', 'hold')} a single image, so "
                        f"{agree(len(single), 'its', 'their')} batches only ever "
                        f"repeat it: {_listing(single)}")

    upscaled = [f"{_name(i)} ({_wxh(i.record.size)} -> {_wxh(i.assignment.resized)})"
                for i in plan.images if i.assignment.upscaled]
    if upscaled:
        warnings.append(f"{count_of(len(upscaled), 'image')} {agree(len(upscaled), 'is', 'are')}"
                        f" enlarged to fill their bucket, which softens "
                        f"them: {_listing(upscaled)}")
    if s.enable_bucket and not s.no_upscale:
        low = s.min_bucket_reso - s.min_bucket_reso % s.bucket_reso_steps
        tiny = [f"{_name(i)} ({_wxh(i.record.size)})" for i in plan.images if min(i.record.size) < low]
        if tiny:
            warnings.append(f"{count_of(len(tiny), 'image')} {agree(len(tiny), 'is', 'are')}"
                            f" smaller than the minimum bucket side ({low} px): "
                            f"{_listing(tiny)}")
    elif s.enable_bucket:
        area = s.resolution[0] * s.resolution[1]
        small_imgs = [i for i in plan.images if i.record.size[0] * i.record.size[1] < area]
        if small_imgs:
            notes.append(f"{count_of(len(small_imgs), 'image')} {agree(len(small_imgs), 'has', 'have')}"
                         f" fewer pixels than {_wxh(s.resolution)} and "
                         "train at their own size (no upscaling), in buckets of their own size")

    converted: dict[str, list[str]] = {}
    for image in plan.images:
        note = conversion_note(image.record.info.mode)
        if note:
            converted.setdefault(note, []).append(_name(image))
    for note, names in converted.items():
        notes.append(f"{count_of(len(names), 'image')} {agree(len(names), 'is', 'are')}"
                     f" converted when loaded ({note}): {_listing(names)}")
    # Planning never decodes pixels (that keeps it fast), so say so: data damaged past a
    # sound header and ending passes here and stops the run at its first load, by name.
    checked = header_checked(plan)
    notes.append(f"{count_of(checked, 'image')} {agree(checked, 'was', 'were')} checked by "
                 f"{agree(checked, 'its header', 'their headers')} only; a damaged image "
                 "is found when it is first decoded (caching latents or training)")
    notes.append(f"mean aspect-ratio error {plan.mean_ar_error:.4f} (bucket shape vs image shape)")
    fractions = [(cropped_fraction(i), i) for i in plan.images]
    mean_crop = sum(f for f, _ in fractions) / len(fractions)
    worst_fraction, worst = max(fractions, key=lambda pair: pair[0])
    if worst_fraction > 0:
        notes.append(f"cropping removes {mean_crop:.1%} of each image's pixels on average "
                     f"(most: {_name(worst)}, {worst_fraction:.1%})")
    long_captions = long_caption_warning(plan)
    if long_captions:
        warnings.append(long_captions)
    over_limit = token_limit_warning(plan)
    if over_limit:
        warnings.append(over_limit)
    if worst_fraction > 0.2:
        warnings.append(f"{_name(worst)} loses {worst_fraction:.0%} of its pixels to cropping; "
                        "check that the subject stays in frame")
    if plan.steps and plan.steps.stops_mid_epoch:
        done = plan.steps.max_train_steps - (plan.steps.epochs - 1) * plan.steps.steps_per_epoch
        notes.append(f"max_train_steps {plan.steps.max_train_steps} ends epoch {plan.steps.epochs} after "
                     f"{done} of its {plan.steps.steps_per_epoch} steps")
    return warnings, notes


def format_plan(plan: DatasetPlan, title: str = "") -> str:
    """A readable table of the plan for the terminal."""
    lines = [title] if title else []
    s = plan.settings
    lines.append(f"resolution {_wxh(s.resolution)}, batch size {plan.batch_size}, "
                 + ("bucketing off" if not s.enable_bucket else
                    f"bucket step {s.bucket_reso_steps}, "
                    + ("no upscaling" if s.no_upscale else f"buckets {s.min_bucket_reso}..{s.max_bucket_reso}")))
    lines.append("")
    lines.append(f"{'bucket':>11}  {'aspect':>6}  {'images':>6}  {'batches':>7}")
    for bucket, count in sorted(plan.buckets.items(), key=lambda item: item[0][0] / item[0][1]):
        n_batches = math.ceil(count / plan.batch_size)
        lines.append(f"{_wxh(bucket):>11}  {bucket[0] / bucket[1]:>6.2f}  {count:>6}  {n_batches:>7}")
    lines.append(f"{'total':>11}  {'':>6}  {sum(plan.buckets.values()):>6}  {plan.batches_per_epoch:>7}")
    lines.append("")
    if plan.steps:
        lines.append(f"batches per epoch {plan.steps.batches_per_epoch}, steps per epoch "
                     f"{plan.steps.steps_per_epoch}, epochs {plan.steps.epochs}, "
                     f"max train steps {plan.steps.max_train_steps}")
    lines.append(f"training images {plan.num_train_images} and regularisation images "
                 f"{plan.num_reg_images} (with repeats)")
    for heading, items in (("notes", plan.notes), ("warnings", plan.scan_warnings + plan.warnings)):
        if items:
            lines.append("")
            lines.append(f"{heading}:")
            lines += [f"  - {item}" for item in items]
    if plan.skipped:
        lines.append("")
        lines.append(f"skipped ({len(plan.skipped)}):")
        lines += [f"  - {s.display_path}: {s.reason}" for s in plan.skipped]
    return "\n".join(lines)
