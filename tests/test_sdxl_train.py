"""SDXL end to end on the CPU: the tiny SDXL-shaped built-in model trains through the real
engine, its LoRA file has Kohya's SDXL layout, and diffusers' SDXL pipeline loads that file
with every key used and computes what the trained model computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from core.config.schema import ModelFamily
from core.models.sdxl import DEMO_SDXL_MODEL
from core.training.engine import Trainer
from core.training.events import Finished, ListSink, StepMetrics
from tests.engine_fixtures import tiny_config


def sdxl_config(root: Path, steps: int = 2, **network: object):  # noqa: ANN201 - TrainConfig
    config = tiny_config(root, steps=steps)
    config.model.base_model = DEMO_SDXL_MODEL
    config.model.family = ModelFamily.AUTO  # found from the built-in model
    config.dataset.bucket_reso_steps = 32
    config.network.train_text_encoder = False  # U-Net only, as SDXL LoRAs are usually trained
    for name, value in network.items():
        setattr(config.network, name, value)
    return config


def _run(config) -> tuple[Finished, ListSink]:  # noqa: ANN001
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    return result, sink


def _names(path: str) -> tuple[set[str], dict[str, str]]:
    with safe_open(path, "pt") as lora:
        return {key.split(".")[0] for key in lora.keys()}, lora.metadata()


def test_both_text_encoders_and_the_unet_train_into_kohyas_sdxl_layout(tmp_path: Path) -> None:
    result, sink = _run(sdxl_config(tmp_path, train_text_encoder=True))
    names, metadata = _names(result.lora_path)
    prefixes = {name.split("_")[0] + "_" + name.split("_")[1] for name in names}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    # The U-Net is named as the original SDXL code names it, not as diffusers does.
    assert any(name.startswith("lora_unet_input_blocks_") for name in names)
    assert any(name.startswith("lora_unet_middle_block_1_transformer_blocks_0_") for name in names)
    assert not any("down_blocks" in name or "up_blocks" in name for name in names)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    steps = [event for event in sink.events if isinstance(event, StepMetrics)]
    assert set(steps[-1].lr) == {"unet", "text_encoder", "text_encoder_2"}


def test_one_encoder_can_be_left_out_and_given_its_own_rate(tmp_path: Path) -> None:
    config = sdxl_config(tmp_path, train_text_encoder=True, train_text_encoder_1=False)
    config.optimizer.text_encoder_2_lr = 5e-4
    result, sink = _run(config)
    names, _ = _names(result.lora_path)
    assert not any(name.startswith("lora_te1_") for name in names)
    assert any(name.startswith("lora_te2_") for name in names)
    first = [event for event in sink.events if isinstance(event, StepMetrics)][0]
    assert set(first.lr) == {"unet", "text_encoder_2"}
    # The schedule scales every group alike: the encoder's rate keeps its ratio to the U-Net's.
    assert first.lr["text_encoder_2"] / first.lr["unet"] == pytest.approx(5e-4 / config.optimizer.learning_rate)


def test_unet_only_caches_both_encoders_outputs_and_trains_the_same(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from core.training import placement

    from core.training.events import Status

    def fixed_captions(root: Path):  # noqa: ANN202
        config = sdxl_config(root, steps=3)
        config.dataset.subsets[0].shuffle_caption = False
        return config

    cached, sink = _run(fixed_captions(tmp_path / "cached"))
    assert any(isinstance(e, Status) and "text-encoder outputs cached for 5" in e.text for e in sink.events)
    monkeypatch.setattr(placement, "can_cache_text_states", lambda config, subsets: False)
    direct, _ = _run(fixed_captions(tmp_path / "direct"))
    losses = [[r["loss"] for r in map(json.loads, (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines())
               if r.get("type") == "step"] for run in (cached, direct)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)


def test_samples_are_drawn_with_the_sdxl_pipeline(tmp_path: Path) -> None:
    config = sdxl_config(tmp_path, steps=1)
    config.sampling.prompts = "kiln --w 64 --h 64 --s 2 --d 5"
    config.sampling.every_n_epochs = 1
    result, _ = _run(config)
    from PIL import Image

    [sample] = sorted((Path(result.run_dir) / "samples").glob("*.png"))
    assert Image.open(sample).size == (64, 64)


def _kohya_to_diffusers_outputs(lora_path: str):  # noqa: ANN202
    """The tiny SDXL's U-Net and encoder outputs, with the file applied by diffusers."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from core.models.sdxl import FAMILY

    base = FAMILY.build_demo(0)
    pipe = StableDiffusionXLPipeline(vae=base.vae, text_encoder=base.text_encoders["text_encoder"],
                                     text_encoder_2=base.text_encoders["text_encoder_2"],
                                     tokenizer=base.tokenizers["text_encoder"],
                                     tokenizer_2=base.tokenizers["text_encoder_2"], unet=base.unet,
                                     scheduler=EulerDiscreteScheduler())
    from tests.test_kohya_format import _library_messages

    with _library_messages() as messages:
        pipe.load_lora_weights(lora_path)
    complaints = [m for m in messages if any(w in m.lower() for w in ("unexpected", "not found", "renamed", "missing"))]
    assert complaints == []
    return base


def test_diffusers_sdxl_pipeline_loads_the_file_and_computes_what_was_trained(tmp_path: Path) -> None:
    from core.data.size_conditioning import sampling_time_ids
    from core.models.family import TextConditioning
    from core.models.sdxl import FAMILY

    result, _ = _run(sdxl_config(tmp_path, steps=3, train_text_encoder=True))
    # The trained model, rebuilt: the demo with our own file loaded by our own loader.
    from core.kohya.lora_format import load_kohya_into, read_kohya_file
    from core.models.lora import attach_lora

    config = sdxl_config(tmp_path / "again", train_text_encoder=True)
    ours = FAMILY.build_demo(0)
    handles = attach_lora(ours, FAMILY, config.network)
    report = load_kohya_into(handles, FAMILY, read_kohya_file(result.lora_path)[0])
    assert report.missing == [] and report.unexpected == []

    theirs = _kohya_to_diffusers_outputs(result.lora_path)
    untouched = FAMILY.build_demo(0)
    captions = ["kiln, shape 1, blue background"]

    class Batch:
        size_conditioning = torch.tensor([sampling_time_ids(64, 64)], dtype=torch.float32)

    def outputs(components) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        torch.manual_seed(0)
        latents, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
        with torch.no_grad():
            text: TextConditioning = FAMILY.encode_text(components, components.text_encoders, captions, clip_skip=1,
                                                        max_token_length=75, device=torch.device("cpu"))
            prediction = components.unet(latents, t, **FAMILY.unet_inputs(text, Batch())).sample
        return text.states, prediction

    trained, loaded, base = outputs(ours), outputs(theirs), outputs(untouched)
    for got, want, before in zip(loaded, trained, base):
        assert not torch.allclose(want, before, atol=1e-4)  # the LoRA changes both outputs
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_text_encoder_outputs_cached_on_disk_are_read_back_by_the_next_run(tmp_path: Path) -> None:
    from core.config.schema import TextEncoderCache
    from core.training.events import Status

    first_config = sdxl_config(tmp_path / "first", steps=2)
    first_config.dataset.subsets[0].shuffle_caption = False  # fixed captions: the cache applies
    first_config.dataset.text_encoder_cache = TextEncoderCache.DISK
    first, first_sink = _run(first_config)
    second_config = sdxl_config(tmp_path / "second", steps=2)
    second_config.dataset.subsets[0] = first_config.dataset.subsets[0]
    second_config.dataset.text_encoder_cache = TextEncoderCache.DISK
    second, second_sink = _run(second_config)

    def cached(sink: ListSink) -> str:
        return next(e.text for e in sink.events if isinstance(e, Status) and "text-encoder outputs" in e.text)

    assert "read from the disk cache" not in cached(first_sink)
    assert cached(second_sink).endswith("5 distinct captions, 5 read from the disk cache")
    losses = [[r["loss"] for r in map(json.loads, (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines())
               if r.get("type") == "step"] for run in (first, second)]
    assert losses[0] == losses[1]


def test_an_sdxl_lora_continues_training_and_draws_a_grid(tmp_path: Path) -> None:
    import numpy as np

    from core.studies.grid import make_grid, spec_from_run

    config = sdxl_config(tmp_path / "first", steps=2)
    config.sampling.prompts = "kiln --w 64 --h 64 --s 2 --d 5"
    first, _ = _run(config)
    # network.init_weights takes an SDXL LoRA for an SDXL base model.
    again = sdxl_config(tmp_path / "again", steps=1)
    again.network.init_weights = first.lora_path
    _run(again)
    # A grid of the run: the base model and its LoRA, drawn with the SDXL pipeline.
    spec = spec_from_run(first.run_dir)
    spec.include_base_row = True
    grid = make_grid(spec)
    cells = np.asarray(grid)
    assert grid.size[0] >= 128 and cells.std() > 0


def test_the_options_users_set_for_sdxl_take_effect(tmp_path: Path) -> None:
    from core.config.schema import NetworkType, OptimizerType

    config = sdxl_config(tmp_path, steps=2, train_text_encoder=True, type=NetworkType.LOCON, conv_dim=2,
                         conv_alpha=1.0)
    config.optimizer.type, config.optimizer.learning_rate = OptimizerType.PRODIGY, 1.0
    config.training.gradient_checkpointing = True
    config.training.min_snr_gamma, config.training.noise_offset = 5.0, 0.05
    config.model.v_parameterization = True
    result, sink = _run(config)
    names, metadata = _names(result.lora_path)
    # LoCon reaches the resnets' 3x3 convolutions, under their original SDXL names.
    assert any(name.startswith("lora_unet_input_blocks_1_0_in_layers_2") for name in names)
    assert metadata["modelspec.prediction_type"] == "v" and metadata["ss_gradient_checkpointing"] == "True"
    last = [event for event in sink.events if isinstance(event, StepMetrics)][-1]
    assert set(last.dlr) == {"unet", "text_encoder", "text_encoder_2"}  # Prodigy's d * lr per group


def test_an_sdxl_run_stopped_and_resumed_continues_the_same_curve(tmp_path: Path) -> None:
    from core.training.control import Control

    straight, _ = _run(sdxl_config(tmp_path / "straight", steps=4))
    control = Control()
    config = sdxl_config(tmp_path / "split", steps=4)
    sink = ListSink()

    class StopAtTwo(ListSink):
        def emit(self, event) -> None:  # noqa: ANN001
            super().emit(event)
            if isinstance(event, StepMetrics) and event.step == 2:
                control.request_stop()

    stopped = Trainer(config, StopAtTwo(), control).run()
    assert isinstance(stopped, Finished) and stopped.reason == "stopped"
    resumed = Trainer(config, sink, resume_from=Path(stopped.run_dir)).run()
    assert isinstance(resumed, Finished) and resumed.reason == "completed" and resumed.steps == 4

    def losses(run: Finished) -> list[float]:
        return [r["loss"] for r in map(json.loads, (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines())
                if r.get("type") == "step"]

    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
