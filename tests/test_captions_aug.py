"""Caption augmentation per sample: dropout, shuffling after keep_tokens, tag dropout."""

from __future__ import annotations

import random

from core.data.caption_augment import process_caption
from core.config.schema import SubsetParams

TAGS = "sks dog, outdoors, grass, sunny, tree, ball, running, blue sky"


def test_caption_dropout_one_gives_an_empty_caption() -> None:
    options = SubsetParams(caption_dropout_rate=1.0, shuffle_caption=True)
    assert process_caption(TAGS, options, random.Random(0)) == ""


def test_without_options_the_caption_is_unchanged_spacing_included() -> None:
    caption = " sks dog ,grass,  tree "
    assert process_caption(caption, SubsetParams(), random.Random(0)) == caption


def test_shuffle_keeps_the_first_keep_tokens_and_permutes_the_rest() -> None:
    options = SubsetParams(shuffle_caption=True, keep_tokens=2)
    tags = TAGS.split(", ")
    results = [process_caption(TAGS, options, random.Random(seed)).split(", ") for seed in range(20)]
    for result in results:
        assert result[:2] == tags[:2]
        assert sorted(result[2:]) == sorted(tags[2:])
    assert any(result != tags for result in results)


def test_shuffle_strips_the_spaces_around_tags() -> None:
    options = SubsetParams(shuffle_caption=True)
    result = process_caption(" a ,b,  c ", options, random.Random(0))
    assert sorted(result.split(", ")) == ["a", "b", "c"]


def test_tag_dropout_one_keeps_only_the_fixed_tokens() -> None:
    options = SubsetParams(caption_tag_dropout_rate=1.0, keep_tokens=1)
    assert process_caption(TAGS, options, random.Random(0)) == "sks dog"


def test_tag_dropout_without_shuffle_keeps_the_order() -> None:
    options = SubsetParams(caption_tag_dropout_rate=0.5)
    tags = TAGS.split(", ")
    result = process_caption(TAGS, options, random.Random(3)).split(", ")
    assert result == [tag for tag in tags if tag in result]


def test_the_same_rng_state_gives_the_same_caption() -> None:
    options = SubsetParams(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.3,
                           caption_dropout_rate=0.2)
    first = [process_caption(TAGS, options, random.Random(f"7:{i}")) for i in range(10)]
    second = [process_caption(TAGS, options, random.Random(f"7:{i}")) for i in range(10)]
    assert first == second
