"""LoRA Kiln's LoRA learns a new concept as well as a plain diffusers + peft loop does, and
learns it as the trigger word's meaning.

A tiny base model is pretrained on a few captioned classes (each class decides its picture's
background colour and its shape, so the caption decides most latents), then both trainers
teach it "zxq star" with the same pictures, captions, regularisation pictures of the known
classes, steps, batch, learning rate and schedule, optimizer, rank and modules
(tests/learning_check.py): SD 1.x with its text encoder trained too, SDXL on the U-Net alone
with the text encoders' outputs cached, as SDXL LoRAs mostly are. The held-out denoising loss on new star pictures
is measured by diffusers alone, LoRA Kiln's file loaded with ``load_lora_weights``.

Why regularisation pictures: without them, both trainers' LoRAs learnt "star on purple" for
every caption (the held-out gain with "blue square" was as large as with "zxq star": 0.99x,
and 0.66-0.95x in earlier settings; each class's own loss rose 19-37%), though the base
listens to its captions: with one concept and no counter-examples nothing asks a LoRA to
leave other captions alone, in this tiny model as in SD. Kohya's prior preservation is what
asks it; it also makes the check exercise LoRA Kiln's regularisation path.

Each model family is one parametrisation: add its learning_check.LearningModel to MODELS.
Margins (the report of issue 15, item 6, has the measured values: LoRA Kiln's gain was
0.998-1.02x the reference's on SD 1.x and 1.004-1.009x on SDXL; the right trigger's gain
3.2-5.2x the wrong one's on SD 1.x, 4.7x (U-Net only) and 14x (encoders trained too) on SDXL):
LoRA Kiln must reach 90% of the reference's improvement; the right trigger's improvement
must be at least TEXT_MARGIN times the wrong trigger's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import learning_check as lc

pytestmark = pytest.mark.slow

MODELS = [lc.SD1, lc.SDXL]
WRONG_TRIGGER = "blue square"  # a class the base model knows: the LoRA must not make it a star
TEXT_MARGIN = 1.5
LISTENS = 0.10  # the base model's loss with another class's caption is at least 10% higher


@dataclass(frozen=True)
class Outcome:
    caption_effect: dict[str, float]  # per class: the base's loss with the next class's caption / own - 1
    base: float  # held-out loss of the base model, right caption
    kiln: float
    reference: float
    base_wrong: float  # ... with the wrong trigger
    kiln_wrong: float
    kiln_modules: int
    reference_modules: int

    @property
    def kiln_gain(self) -> float:
        return self.base - self.kiln

    @property
    def reference_gain(self) -> float:
        return self.base - self.reference

    @property
    def kiln_wrong_gain(self) -> float:
        return self.base_wrong - self.kiln_wrong


@pytest.fixture(scope="session", params=MODELS, ids=lambda model: model.family)
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from safetensors import safe_open

    model: lc.LearningModel = request.param
    root: Path = tmp_path_factory.mktemp(f"learning-{model.family}")
    lc.pretrain(model, root / "base", steps=model.pretrain_steps)
    recipe = model.recipe or lc.Recipe()
    data = lc.write_concept_folder(root / "data", recipe.images, recipe.image_seed)
    reg = lc.write_regularisation_folder(root / "reg", recipe.reg_per_class, recipe.reg_seed, recipe.reg_repeats)
    kiln_file = lc.train_kiln(model, root / "base", data, root / "runs", recipe, reg)
    reference, reference_modules = lc.train_reference(model, root / "base", data, recipe, reg)
    with safe_open(str(kiln_file), "pt") as lora:
        kiln_modules = len({key.split(".")[0] for key in lora.keys()})
    base = lc.load_pipeline(model, root / "base")
    kiln = lc.load_pipeline(model, root / "base")
    kiln.load_lora_weights(str(kiln_file))
    latents = lc.held_out_latents(base)

    def loss(pipe: object, caption: str) -> float:
        return lc.denoising_loss(model, pipe, latents, caption)

    return Outcome(caption_effect=lc.caption_effect(model, base),
                   base=loss(base, lc.CONCEPT), kiln=loss(kiln, lc.CONCEPT), reference=loss(reference, lc.CONCEPT),
                   base_wrong=loss(base, WRONG_TRIGGER), kiln_wrong=loss(kiln, WRONG_TRIGGER),
                   kiln_modules=kiln_modules, reference_modules=reference_modules)


def test_the_base_model_listens_to_its_captions(outcome: Outcome) -> None:
    """The precondition of the trigger check: a base that ignored its text could not show one."""
    assert min(outcome.caption_effect.values()) > LISTENS, outcome.caption_effect


def test_both_trainers_put_lora_on_the_same_modules(outcome: Outcome) -> None:
    assert outcome.kiln_modules == outcome.reference_modules > 0


def test_both_loras_lower_the_held_out_loss_of_the_concept(outcome: Outcome) -> None:
    assert outcome.reference_gain > 0.01 * outcome.base, outcome
    assert outcome.kiln_gain > 0.01 * outcome.base, outcome


def test_lora_kiln_learns_the_concept_as_well_as_diffusers_and_peft(outcome: Outcome) -> None:
    assert outcome.kiln_gain >= 0.9 * outcome.reference_gain, outcome


def test_lora_kiln_ties_the_concept_to_its_trigger_word(outcome: Outcome) -> None:
    assert outcome.kiln_gain >= TEXT_MARGIN * outcome.kiln_wrong_gain, outcome
