"""Long captions (training.max_token_length 75/150/225) as sd-scripts encodes them: chunks of
75 tokens, each with its own BOS and end id, encoded apart and joined to 75 * chunks + 2
states; the U-Net, training, sampling, the plan, Kohya configs and the LoRA metadata follow."""

from __future__ import annotations

import pytest
import torch

from core.models.sd1 import FAMILY as SD1
from core.models.sd15_files import BOS_TOKEN_ID as BOS
from core.models.sd15_files import EOS_TOKEN_ID as EOS
from core.models.sd15_files import load_tokenizer
from core.models.clip_text import encode, tokenize
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
    from core.models.clip_text import CHARACTERS_PER_TOKEN

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


# ------------------------------------------------------------------ training and sampling


def test_a_run_at_225_trains_the_unet_on_227_states_and_records_the_length(tmp_path, monkeypatch):
    from safetensors import safe_open

    import core.models.clip_text as clip_text
    from core.training.engine import Trainer
    from core.training.events import Finished, ListSink
    from tests.engine_fixtures import tiny_config

    config = tiny_config(tmp_path, steps=3)
    config.training.max_token_length = 225
    for caption in (tmp_path / "data" / "2_kiln").glob("*.txt"):
        caption.write_text(_cats(180), "utf-8")  # past two chunks: all three carry tokens
    shapes = []

    def recording_encode(*args, **kwargs):
        states = encode(*args, **kwargs)
        shapes.append(tuple(states.shape))
        return states

    monkeypatch.setattr(clip_text, "encode", recording_encode)
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    assert [shape[1:] for shape in shapes] == [(227, TINY_CONTEXT_DIM)] * 3
    with safe_open(result.lora_path, "pt") as lora:
        assert lora.metadata()["ss_max_token_length"] == "225"


def _prompt(text: str, negative: str = ""):
    from core.config.schema import Sampler
    from core.config.prompts import SamplePrompt

    return SamplePrompt(prompt=text, negative=negative, width=64, height=64, steps=2, cfg_scale=5.0, seed=3,
                        sampler=Sampler.EULER, line_number=1)


def test_a_long_sample_prompt_is_encoded_as_captions_are():
    import numpy as np

    from core.models.base_model import build_demo_model

    demo = build_demo_model()
    long, cut = _prompt(_cats(80) + " dog"), _prompt(_cats(80))
    positive, negative = SD1.prompt_states(demo, long, clip_skip=1, max_token_length=150)
    assert positive.shape == negative.shape == (1, 152, 32)  # the negative prompt pairs up
    different = [np.asarray(SD1.generate(demo, p, clip_skip=1, device=torch.device("cpu"), dtype=torch.float32, max_token_length=150)) for p in (long, cut)]
    assert not np.array_equal(*different)  # the dog past token 75 reaches the image
    same = [np.asarray(SD1.generate(demo, p, clip_skip=1, device=torch.device("cpu"), dtype=torch.float32, max_token_length=75)) for p in (long, cut)]
    np.testing.assert_array_equal(*same)  # at 75 it is cut, as before


def test_at_75_tokens_a_sample_is_the_image_diffusers_makes_from_the_prompt_text():
    import numpy as np
    from diffusers import StableDiffusionPipeline

    from core.models.base_model import build_demo_model
    from core.models.samplers import make_scheduler

    demo = build_demo_model()
    prompt = _prompt("a cat on a kiln", negative="blurry")
    ours = SD1.generate(demo, prompt, clip_skip=1, device=torch.device("cpu"), dtype=torch.float32, max_token_length=75)
    pipe = StableDiffusionPipeline(vae=demo.vae, text_encoder=demo.text_encoders["text_encoder"], tokenizer=demo.tokenizers["text_encoder"],
                                   unet=demo.unet, scheduler=make_scheduler(prompt.sampler, "epsilon"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = pipe(prompt.prompt, negative_prompt=prompt.negative, width=64, height=64, num_inference_steps=2,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_sample_with_clip_skip_2_uses_the_layer_training_uses():
    # diffusers' own clip_skip path reads text_encoder.text_model, which transformers 5's
    # CLIPTextModel does not have; the prompt states come from the training encoder instead.
    from core.models.base_model import build_demo_model

    demo = build_demo_model()
    prompt = _prompt("a cat on a kiln")
    positive, _ = SD1.prompt_states(demo, prompt, clip_skip=2, max_token_length=75)
    ids = tokenize(demo.tokenizers["text_encoder"], [prompt.prompt])
    with torch.no_grad():
        torch.testing.assert_close(positive, encode(demo.text_encoders["text_encoder"], ids, 2))
        assert SD1.generate(demo, prompt, clip_skip=2, device=torch.device("cpu"), dtype=torch.float32, max_token_length=75).size == (64, 64)


# ------------------------------------------------------------------ plan, config, metadata


def _captioned_dataset(tmp_path, lengths: dict[str, int]):
    from PIL import Image

    from core.config.schema import DatasetParams, Duration, SubsetParams, TrainConfig

    folder = tmp_path / "1_cat"
    folder.mkdir()
    for name, count in lengths.items():
        Image.new("RGB", (512, 512), (120, 90, 60)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(_cats(count), "utf-8")
    config = TrainConfig()
    config.dataset = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path), kohya_layout=True)])
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 1
    return config


def _token_warning(plan) -> str | None:
    return next((w for w in plan.warnings if "tokens, the most" in w), None)


def test_the_plan_counts_the_captions_past_the_limit_and_names_the_longest(tmp_path):
    from core.data.plan import plan_dataset

    config = _captioned_dataset(tmp_path, {"short": 10, "edge": 75, "mid": 100, "long": 200, "twin": 200})
    plan = plan_dataset(config.dataset, config.training)
    assert _token_warning(plan) == (
        "3 images have captions longer than 75 tokens, the most that reach the text encoder "
        "(training.max_token_length): long.txt (200 tokens), twin.txt (200 tokens), mid.txt (100 tokens). "
        "The tokens past 75 never train; set training.max_token_length to 150 or 225 (sd-scripts' "
        "--max_token_length) or shorten these captions")
    config.training.max_token_length = 150
    warning = _token_warning(plan_dataset(config.dataset, config.training))
    assert warning.startswith("2 images have captions longer than 150 tokens") and "to 225 (" in warning
    config.training.max_token_length = 225
    assert _token_warning(plan_dataset(config.dataset, config.training)) is None


def test_a_runaway_caption_is_counted_only_as_far_as_any_limit_reaches(tmp_path):
    from core.data.caption_tokens import COUNTED_CHARACTERS, captions_over

    runaway = "cat " * 1_000_000
    (count,) = captions_over([runaway], 225).values()
    assert count >= 225 and count <= COUNTED_CHARACTERS
    assert captions_over(["cat, dog", ""], 75) == {}


def test_max_token_length_is_validated_and_written_to_the_lora_metadata(tmp_path):
    from core.kohya.metadata import build_metadata
    from core.data.plan import plan_dataset
    from core.training.validation import validate

    config = _captioned_dataset(tmp_path, {"a": 10})
    plan = plan_dataset(config.dataset, config.training)
    for length in (75, 150):
        config.training.max_token_length = length
        meta = build_metadata(config, plan, family=SD1, epoch=1, step=1, session_id="1", training_started_at=0.0,
                              training_finished_at=1.0, model_name="m.safetensors", title="t")
        assert meta["ss_max_token_length"] == str(length)
    config.training.max_token_length = 100
    problems = [p for p in validate(config, check_paths=False) if p.path == "training.max_token_length"]
    assert [p.message for p in problems] == ["100 is not allowed; choose 75, 150, 225"]


@pytest.mark.parametrize("length", [75, 150, 225])
def test_max_token_length_round_trips_through_kohya_export_and_import(tmp_path, length):
    from core.config.schema import TrainConfig
    from core.kohya.export import build_export, write_export
    from core.kohya.import_config import import_kohya

    config = TrainConfig()
    config.training.max_token_length = length
    write_export(build_export(config, tmp_path), tmp_path)
    assert f"max_token_length = {length}\n" in (tmp_path / "config.toml").read_text("utf-8")
    result = import_kohya([tmp_path / "config.toml"])
    assert result.config.training.max_token_length == length
    assert ("max_token_length", "training.max_token_length") in {(m.key, m.field) for m in result.mapped}


def test_a_grid_from_a_lora_file_encodes_prompts_at_the_length_it_was_trained_with(tmp_path):
    from safetensors.torch import save_file

    from core.cli.grid import _settings_from_lora

    found = {}
    for recorded in ("150", "None", "1000", None):  # sd-scripts writes "None" when it was not given
        path = tmp_path / f"{recorded}.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={} if recorded is None else
                  {"ss_max_token_length": recorded})
        found[recorded] = _settings_from_lora(path)["max_token_length"]
    assert found == {"150": 150, "None": 75, "1000": 75, None: 75}


def test_captions_counted_ahead_plan_without_the_tokenizer(monkeypatch):
    # The dataset scan's worker counts captions, so the GUI thread's plan finds them counted.
    import core.data.caption_tokens as counting

    captions = [f"{_cats(90)} number {i}" for i in range(5)]
    stopped = [f"{_cats(90)} never {i}" for i in range(3)]
    counting.count_ahead(stopped, cancelled=lambda: True)
    counting.count_ahead(captions, batch=2)

    def no_tokenizer():
        raise AssertionError("tokenised on the planning thread")

    monkeypatch.setattr(counting, "_tokenizer", no_tokenizer)
    assert counting.captions_over(captions, 75) == {caption: 92 for caption in captions}
    assert counting.captions_over(captions, 150) == {}
    with pytest.raises(AssertionError, match="planning thread"):
        counting.captions_over(stopped, 75)  # a cancelled count left them to the plan
