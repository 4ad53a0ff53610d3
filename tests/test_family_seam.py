"""The model-family seam: a second family plugs in by adding one module (tests/toy_family.py),
and the engine, LoRA file, metadata and validation follow whichever family a run names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from safetensors import safe_open

from core.config.schema import DEMO_MODEL, ModelFamily
from core.models.family import UnsupportedFamily, families, family_for, family_named, unregister
from core.training.engine import Trainer
from core.training.events import Finished, ListSink
from core.training.validation import errors, validate
from tests.engine_fixtures import tiny_config


@pytest.fixture
def toy() -> Iterator[object]:
    from tests import toy_family

    toy_family.register(toy_family.FAMILY)  # a module is imported once; a test may have unregistered it
    yield toy_family
    unregister("toy")


def test_sd1_is_built_in_and_the_other_settings_are_refused_with_what_trains() -> None:
    assert [f.name for f in families()][:1] == ["sd1"]
    assert family_for(DEMO_MODEL, "sd1") is family_named("sd1")
    with pytest.raises(UnsupportedFamily, match="SD 2.x is not supported yet; LoRA Kiln trains SD 1.x and SDXL"):
        family_named(ModelFamily.SD2)


def test_a_built_in_model_of_another_family_is_named_when_the_setting_disagrees(toy) -> None:  # noqa: ANN001
    with pytest.raises(UnsupportedFamily, match="builtin:toy is a model of the Toy family, but "
                                                "model.family is SD 1.x; set model.family to toy"):
        family_for(toy.TOY_MODEL, "sd1")
    config = tiny_config_for(toy.TOY_MODEL, "sd1")
    assert [p.path for p in errors(validate(config))] == ["model.family"]


def tiny_config_for(model: str, family: str, root=None):  # noqa: ANN001, ANN201
    import tempfile
    from pathlib import Path

    config = tiny_config(Path(root or tempfile.mkdtemp()), steps=2)
    config.model.base_model, config.model.family = model, family
    return config


def test_a_toy_family_trains_end_to_end_with_its_own_targets_and_metadata(toy, tmp_path) -> None:  # noqa: ANN001
    config = tiny_config_for(toy.TOY_MODEL, "toy", tmp_path)
    config.network.train_text_encoder = True  # the toy family puts no LoRA on its text encoder
    assert errors(validate(config)) == []
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    with safe_open(result.lora_path, "pt") as lora:
        names = {key.split(".")[0] for key in lora.keys()}
        metadata = lora.metadata()
        ups = [lora.get_tensor(k) for k in lora.keys() if k.endswith("lora_up.weight")]
    assert names and all(name.startswith("lora_unet_") and name.endswith(("attn1_to_q", "attn1_to_v"))
                         for name in names)
    # ten transformer blocks in the demo U-Net (3 down, 1 mid, 3 x 2 up), two modules each
    assert len(names) == 20
    assert any(bool(up.abs().sum() > 0) for up in ups)  # it trained
    assert metadata["ss_base_model_version"] == "toy_v1"
    assert metadata["modelspec.architecture"] == "toy/lora"
    assert metadata["ss_sd_model_name"] == "toy model"


def test_the_sd1_demo_still_gets_every_attention_and_text_encoder_module(tmp_path) -> None:  # noqa: ANN001
    config = tiny_config(tmp_path, steps=1)
    config.network.train_text_encoder = True
    result = Trainer(config, ListSink()).run()
    with safe_open(result.lora_path, "pt") as lora:
        names = {key.split(".")[0] for key in lora.keys()}
        assert lora.metadata()["ss_base_model_version"] == "sd_v1"
    assert any(n.startswith("lora_te_text_model_") for n in names)
    assert any(n.endswith("attn2_to_k") for n in names) and len(names) > 20
