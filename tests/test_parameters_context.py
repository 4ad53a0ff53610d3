"""The Parameters tab shows each field only where it means something: an optimizer's own
settings for that optimizer, a network type's for that type, a family's for that family
(offscreen), with or without "Show advanced"."""

import pytest

from core.config.presets import find_preset, load_preset
from gui.parameters_tab import ParametersTab
from gui.project import Project

PRODIGY_ONLY = ("optimizer.d_coef", "optimizer.safeguard_warmup")
D_ADAPTING = ("optimizer.growth_rate", "optimizer.d0", "optimizer.use_bias_correction", "optimizer.decouple")
# Which optimizer settings each optimizer is shown with (those of core/config/optimizers.py).
SHOWN = {
    "AdamW": {"optimizer.betas", "optimizer.eps"},
    "AdamW8bit": {"optimizer.betas", "optimizer.eps"},
    "Prodigy": {"optimizer.betas", "optimizer.eps", *PRODIGY_ONLY, *D_ADAPTING},
    "DAdaptAdam": {"optimizer.betas", "optimizer.eps", *D_ADAPTING},
    "Lion": {"optimizer.betas"},
    "Adafactor": set(),
}
SCOPED = sorted({"optimizer.betas", "optimizer.eps", *PRODIGY_ONLY, *D_ADAPTING})


@pytest.fixture
def project():
    project = Project()
    project.load(load_preset(find_preset("demo")), builtin=True)
    return project


@pytest.fixture
def tab(qtbot, project):
    tab = ParametersTab(project)
    qtbot.addWidget(tab)
    tab.resize(1100, 800)
    tab.show()
    return tab


@pytest.mark.parametrize("optimizer", list(SHOWN))
def test_optimizer_settings_are_shown_only_for_their_optimizer(tab, project, optimizer):
    tab.advanced.setChecked(True)
    project.set_value("optimizer.type", optimizer)
    shown = {path for path in SCOPED if tab.editor(path).isVisible()}
    assert shown == SHOWN[optimizer]
    assert tab.editor("optimizer.weight_decay").isVisible()  # every optimizer takes it
    tab.validate_now()  # a later check keeps them as they are
    assert {path for path in SCOPED if tab.editor(path).isVisible()} == SHOWN[optimizer]


def test_without_advanced_no_optimizer_setting_of_another_optimizer_appears(tab, project):
    project.set_value("optimizer.type", "Adafactor")
    tab.advanced.setChecked(True)
    assert not any(tab.editor(path).isVisible() for path in PRODIGY_ONLY + D_ADAPTING)
    tab.advanced.setChecked(False)
    project.set_value("optimizer.type", "Prodigy")
    assert not any(tab.editor(path).isVisible() for path in PRODIGY_ONLY + D_ADAPTING)  # advanced ones


def test_a_setting_of_another_optimizer_with_a_problem_stays_in_view_until_reset(tab, project):
    tab.advanced.setChecked(True)
    project.set_value("optimizer.type", "AdamW")
    project.set_value("optimizer.growth_rate", 1.05)  # only Prodigy and DAdaptAdam use it: a warning
    tab.validate_now()
    assert tab.editor("optimizer.growth_rate").isVisible()
    project.set_value("optimizer.growth_rate", float("inf"))
    tab.validate_now()
    assert not tab.editor("optimizer.growth_rate").isVisible()


@pytest.mark.parametrize("network, conv", [("LoRA", False), ("LoCon", True), ("LoHa", True),
                                           ("LoKr", True), ("IA3", False)])
def test_conv_dim_and_alpha_are_shown_only_for_network_types_with_convolutions(tab, project, network, conv):
    tab.advanced.setChecked(True)
    project.set_value("network.type", network)
    assert tab.editor("network.conv_dim").isVisible() is conv
    assert tab.editor("network.conv_alpha").isVisible() is conv
    lokr = [tab.editor(f"network.lokr_{name}").isVisible() for name in ("factor", "full_matrix", "decompose_both")]
    assert lokr == [network == "LoKr"] * 3
    assert tab.editor("network.dropout").isVisible() is (network in ("LoRA", "LoCon"))
    assert tab.editor("network.dora_wd").isVisible() is (network != "IA3")


def test_family_fields_are_shown_only_for_their_family(tab, project):
    from core.models.sdxl import DEMO_SDXL_MODEL

    tab.advanced.setChecked(True)
    sdxl_only = ["network.train_text_encoder_1", "network.train_text_encoder_2", "optimizer.text_encoder_2_lr"]
    assert tab.model_family() == "sd1" and not any(tab.editor(p).isVisible() for p in sdxl_only)
    project.set_value("model.base_model", DEMO_SDXL_MODEL)
    tab.validate_now()
    assert all(tab.editor(p).isVisible() for p in sdxl_only)


@pytest.mark.parametrize("network", ["LoRA", "LoCon", "LoHa", "LoKr", "IA3"])
def test_networks_lora_options_are_shown_only_for_lora_and_locon(tab, project, network):
    # Dropouts and per-block settings are sd-scripts' networks.lora options (refused on LyCORIS
    # types); the per-block convolution settings act only where convolutions are adapted (LoCon).
    tab.advanced.setChecked(True)
    project.set_value("network.type", network)
    lora_options = ("rank_dropout", "module_dropout", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
                    "block_lr_zero_threshold", "block_dims", "block_alphas")
    assert [tab.editor(f"network.{name}").isVisible() for name in lora_options] == \
        [network in ("LoRA", "LoCon")] * len(lora_options)
    assert [tab.editor(f"network.{name}").isVisible() for name in ("conv_block_dims", "conv_block_alphas")] == \
        [network == "LoCon"] * 2
