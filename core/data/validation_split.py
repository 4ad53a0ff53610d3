"""Which images are held out of training for the validation loss.

As sd-scripts does (``split_train_val``), each training folder is split on its own: its images,
in path order, are shuffled by the validation seed and the last ``fraction`` of them held out,
so every folder keeps the same share and a folder of one image is never emptied by rounding.
Regularisation images are never held out: they keep the model's prior, and a loss on them says
nothing about what the LoRA learns.
"""

from __future__ import annotations

import math
import random

from core.data.scan import ImageRecord


def held_out_count(count: int, fraction: float) -> int:
    """Images of a folder of ``count`` held out (sd-scripts trains ceil(count * (1 - fraction)))."""
    if fraction <= 0 or count == 0:
        return 0
    return count - math.ceil(count * (1 - fraction))


def empty_split_message(folder_sizes: list[int], fraction: float) -> str | None:
    """What to say when ``fraction`` holds no image out of any training folder (their image
    counts in ``folder_sizes``): the split rounds down in each folder, so 0.05 of folders under
    20 images is nothing, and a run would have no validation loss without a word. None when
    the split holds some image out, or is off."""
    if fraction <= 0 or not folder_sizes or any(held_out_count(n, fraction) for n in folder_sizes):
        return None
    largest = max(folder_sizes)
    enough = next((k / 100 for k in range(1, 100) if held_out_count(largest, k / 100)), None)
    larger = (f"a split of at least {enough:g} (the largest training folder has {largest} images)"
              if enough is not None and largest > 1 else "a larger split")
    return (f"validation_split {fraction:g} holds out 0 images: it rounds down in each training folder, "
            f"so there is no validation loss; set {larger}, or a validation folder (dataset.validation_dir)")


def split_validation(records: list[ImageRecord], fraction: float,
                     seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(training, held out) of ``records``; training keeps the records' order."""
    if fraction <= 0:
        return list(records), []
    by_subset: dict[int, list[ImageRecord]] = {}
    for record in records:
        if not record.is_reg:
            by_subset.setdefault(record.subset_index, []).append(record)
    held: set[str] = set()
    for _index, folder in sorted(by_subset.items()):
        shuffled = sorted(folder, key=lambda r: str(r.path))
        random.Random(seed).shuffle(shuffled)
        count = held_out_count(len(shuffled), fraction)
        held.update(str(r.path) for r in shuffled[len(shuffled) - count:] if count)
    training = [r for r in records if str(r.path) not in held]
    held_out = sorted((r for r in records if str(r.path) in held), key=lambda r: str(r.path))
    return training, held_out


def validation_seed(seed: int | None, training_seed: int) -> int:
    """The validation seed, or the training seed when none is given (-1, as the schema's
    default says; sd-scripts' None)."""
    return training_seed if seed is None or seed < 0 else seed
