"""Long captions (training.max_token_length 75/150/225) as sd-scripts encodes them: chunks of
75 tokens, each with its own BOS and end id, encoded apart and joined to 75 * chunks + 2
states; the U-Net, training, sampling, the plan, Kohya configs and the LoRA metadata follow."""

from __future__ import annotations

import pytest
import torch

from core.sd15_files import BOS_TOKEN_ID as BOS
from core.sd15_files import EOS_TOKEN_ID as EOS
from core.sd15_files import load_tokenizer
from core.training.text import encode, tokenize
from tests.tiny_sd import TINY_CONTEXT_DIM, tiny_text_encoder, tiny_unet


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _cat_id(tokenizer) -> int:
    (cat,) = tokenizer("cat", add_special_tokens=False).input_ids
    return cat


def _cats(count: int) -> str:
    return " ".join(["cat"] * count)  # "cat" is one token, so this caption is ``count`` tokens


# ------------------------------------------------------------------ token ids


def test_a_100_token_caption_at_150_is_two_chunks_each_with_its_own_bos_and_eos(tokenizer):
    cat = _cat_id(tokenizer)
    ids = tokenize(tokenizer, [_cats(100)], 150)
    assert ids.shape == (1, 2, 77)
    first, second = ids[0].tolist()
    assert first == [BOS] + [cat] * 75 + [EOS]
    # sd-scripts' get_input_ids: BOS, ids 76..150 of the 152, and the sequence's last id.
    assert second == [BOS] + [cat] * 25 + [EOS] * 51


def test_tokens_past_the_limit_are_dropped_and_each_chunk_still_ends_in_eos(tokenizer):
    cat = _cat_id(tokenizer)
    ids = tokenize(tokenizer, [_cats(400)], 225)
    assert ids.shape == (1, 3, 77)
    assert all(chunk == [BOS] + [cat] * 75 + [EOS] for chunk in ids[0].tolist())


def test_a_short_caption_at_150_is_still_padded_to_two_chunks(tokenizer):
    # sd-scripts pads to 152 ids and always cuts max_token_length / 75 chunks: the second
    # chunk of a short caption is BOS and padding (EOS in SD 1.x) only.
    cat = _cat_id(tokenizer)
    ids = tokenize(tokenizer, [_cats(10)], 150)
    assert ids.shape == (1, 2, 77)
    assert ids[0, 0].tolist() == [BOS] + [cat] * 10 + [EOS] * 66
    assert ids[0, 1].tolist() == [BOS] + [EOS] * 76


def test_75_tokens_are_tokenised_as_before(tokenizer):
    caption = _cats(120)
    plain = tokenizer([caption], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    assert tokenize(tokenizer, [caption]).tolist() == plain.input_ids.tolist()
    assert tokenize(tokenizer, [caption], 75).shape == (1, 77)


def test_padding_that_is_not_eos_gets_sd_scripts_sd2_fixes(tokenizer):
    # SD 2.x pads with "!" (id 0): a chunk cut inside the caption ends in EOS instead of
    # padding, and a chunk with no caption left starts <BOS> <EOS> like an empty caption.
    sd2 = load_tokenizer()
    sd2.pad_token = "!"
    assert sd2.pad_token_id == 0 != sd2.eos_token_id
    cat = _cat_id(sd2)
    long, short = tokenize(sd2, [_cats(100), _cats(10)], 150).tolist()
    assert long[0] == [BOS] + [cat] * 75 + [EOS]  # the last id was padding
    assert long[1] == [BOS] + [cat] * 25 + [EOS] + [0] * 50
    assert short[0] == [BOS] + [cat] * 10 + [EOS] + [0] * 65
    assert short[1] == [BOS, EOS] + [0] * 75


def test_a_length_sd_scripts_does_not_offer_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="training.max_token_length is 100; choose one of 75, 150, 225"):
        tokenize(tokenizer, ["cat"], 100)


def test_the_character_cut_scales_with_the_length():
    from core.training.text import CHARACTERS_PER_TOKEN

    seen = []

    class Recording:
        model_max_length, eos_token_id, pad_token_id = 77, EOS, EOS

        def __call__(self, captions, max_length, **kwargs):
            seen.append(captions)
            return type("Out", (), {"input_ids": torch.full((len(captions), max_length), EOS)})()

    tokenize(Recording(), ["tag, " * 100_000], 225)
    assert len(seen[0][0]) == 227 * CHARACTERS_PER_TOKEN


# ------------------------------------------------------------------ states


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_states_join_the_chunks_dropping_inner_bos_and_end_states(tokenizer, clip_skip):
    encoder = tiny_text_encoder()
    ids = tokenize(tokenizer, [_cats(100), _cats(3)], 150)
    with torch.no_grad():
        states = encode(encoder, ids, clip_skip)
        first = encode(encoder, ids[:, 0], clip_skip)  # each chunk on its own, as 77 ids
        second = encode(encoder, ids[:, 1], clip_skip)
    assert states.shape == (2, 152, TINY_CONTEXT_DIM)
    torch.testing.assert_close(states[:, :76], first[:, :76])  # BOS and the first 75 tokens
    torch.testing.assert_close(states[:, 76:151], second[:, 1:76])  # the second chunk without its BOS
    torch.testing.assert_close(states[:, 151], second[:, 76])  # and with its end state


def test_225_gives_227_states_and_75_the_encoders_own_77(tokenizer):
    encoder = tiny_text_encoder()
    with torch.no_grad():
        assert encode(encoder, tokenize(tokenizer, ["cat"], 225), 1).shape == (1, 227, TINY_CONTEXT_DIM)
        ids = tokenize(tokenizer, ["cat"], 75)
        torch.testing.assert_close(encode(encoder, ids, 1), encoder(ids)[0])


def test_the_unet_attends_to_the_longer_context():
    unet = tiny_unet()
    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for length in (77, 152, 227):
            out = unet(latents, torch.tensor([10, 500]), torch.randn(2, length, TINY_CONTEXT_DIM)).sample
            assert out.shape == latents.shape and torch.isfinite(out).all()
