"""Copy the built-in demo dataset to a folder of the person's, so its captions can be
edited: the shipped copy is part of the app (read-only in a frozen build, and replaced by
every update), so the GUI never writes into it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from core.system.resources import is_builtin, resolve_builtin

DEMO_DATASET = "builtin:demo/dataset"
COPY_NAME = "LoRA Kiln demo dataset"


def copy_demo_dataset(parent: Path) -> Path:
    """Copy the demo dataset into a new folder inside ``parent`` and return it.

    A folder of that name already there is never merged into or overwritten: the copy
    gets the next free name ("… 2", "… 3")."""
    target = parent / COPY_NAME
    number = 2
    while target.exists():
        target = parent / f"{COPY_NAME} {number}"
        number += 1
    shutil.copytree(resolve_builtin(DEMO_DATASET), target)
    return target


def uses_demo_dataset(subsets: list) -> bool:
    return any(_is_demo(s.image_dir) for s in subsets)


def point_at_copy(subsets: list, copy: Path) -> list:
    """The subsets with each one that read the shipped demo dataset reading ``copy``."""
    return [dataclasses.replace(s, image_dir=str(copy.joinpath(*_inside_demo(s.image_dir))))
            if _is_demo(s.image_dir) else s for s in subsets]


def _inside_demo(image_dir: str) -> list[str]:
    return [part for part in image_dir.strip("/")[len(DEMO_DATASET):].split("/") if part]


def _is_demo(image_dir: str) -> bool:
    clean = image_dir.strip("/")
    return is_builtin(image_dir) and (clean == DEMO_DATASET or clean.startswith(DEMO_DATASET + "/"))
