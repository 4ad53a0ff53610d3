"""Per-sample caption augmentation: dropout, tag shuffling and tag dropout.

The steps and their order are sd-scripts': whole-caption dropout first, then (only when
shuffling or tag dropout is on) the caption is split into comma-separated tags, the first
``keep_tokens`` stay put, the rest are shuffled and then thinned out. A caption with
neither option passes through untouched, spacing included, as in sd-scripts.

Every random draw comes from the ``rng`` passed in, so a batch's captions follow from
its seed alone (see core.data.pipeline).
"""

from __future__ import annotations

import random

from core.config.schema import SubsetParams


def process_caption(caption: str, options: SubsetParams, rng: random.Random) -> str:
    """The caption as this sample trains with it."""
    rate = options.caption_dropout_rate
    if rate > 0 and rng.random() < rate:
        return ""
    if not (options.shuffle_caption or options.caption_tag_dropout_rate > 0):
        return caption
    tokens = [token.strip() for token in caption.strip().split(",")]
    keep = max(options.keep_tokens, 0)
    fixed, flex = tokens[:keep], tokens[keep:]
    if options.shuffle_caption:
        rng.shuffle(flex)
    flex = _drop_tags(flex, options.caption_tag_dropout_rate, rng)
    return ", ".join(fixed + flex)


def _drop_tags(tags: list[str], rate: float, rng: random.Random) -> list[str]:
    if rate <= 0:
        # No draws at all: turning tag dropout off must not change the shuffles that follow.
        return tags
    return [tag for tag in tags if rng.random() >= rate]
