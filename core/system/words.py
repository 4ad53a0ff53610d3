"""Counts in words: "1 image", "2 images", so no message says "1 image(s)" or "1 steps"."""

from __future__ import annotations


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``noun`` or its plural (``noun + "s"`` unless given) as ``n`` asks for."""
    return noun if n == 1 else (plural_form or noun + "s")


def count(n: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 image"``, ``"0 images"``, ``"3 batches"`` (pass the plural when it is not +s)."""
    return f"{n} {plural(n, noun, plural_form)}"


def agree(n: int, singular: str, plural_form: str) -> str:
    """The verb that goes with ``n`` things: agree(1, "is", "are") == "is"."""
    return singular if n == 1 else plural_form
