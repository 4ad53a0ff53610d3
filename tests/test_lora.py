"""Which modules get LoRA (sd-scripts' choice), attaching them with peft, and training groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config.schema import NetworkParams, NetworkType
from core.models.lora import LoraError, clip_targets, unet_targets
from tests.tiny_sd import sd1_attach, sd15_text_encoder_on_meta, sd15_unet_on_meta, tiny_text_encoder, tiny_unet

LOCON = NetworkParams(type=NetworkType.LOCON, dim=4, alpha=2.0, conv_dim=2, conv_alpha=3.0)


@pytest.fixture(scope="module")
def sd15_unet():
    return sd15_unet_on_meta()


@pytest.fixture(scope="module")
def sd15_text_encoder():
    return sd15_text_encoder_on_meta()


def _unet_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]), torch.randn(2, 77, 32, generator=g)


def _unet_out(unet: torch.nn.Module) -> torch.Tensor:
    sample, t, context = _unet_inputs()
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=context).sample


def _randomise(params: list[torch.nn.Parameter], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_full_sd15_unet_has_192_lora_modules_16_transformers_times_12(sd15_unet):
    targets = unet_targets(sd15_unet, NetworkParams(dim=8, alpha=4.0))
    assert len(targets) == 192
    assert set(targets.values()) == {(8, 4.0)}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in targets
    assert "mid_block.attentions.0.proj_out" in targets
    assert "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj" in targets
    assert not any("resnets" in path for path in targets)


def test_full_sd15_text_encoder_has_72_lora_modules(sd15_text_encoder):
    targets = clip_targets(sd15_text_encoder, NetworkParams())
    assert len(targets) == 72
    assert {path.rsplit(".", 1)[1] for path in targets} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}


def test_locon_adds_86_resnet_and_sampler_modules_with_conv_rank_on_3x3_only(sd15_unet):
    targets = unet_targets(sd15_unet, NetworkParams(type=NetworkType.LOCON, dim=8, alpha=4.0,
                                                    conv_dim=4, conv_alpha=1.0))
    assert len(targets) == 192 + 86  # 22 resnets x (conv1, conv2, time_emb_proj) + 14 shortcuts + 6 samplers
    conv = {p for p, spec in targets.items() if spec == (4, 1.0)}
    assert len(conv) == 22 * 2 + 3 + 3
    assert targets["down_blocks.0.resnets.0.time_emb_proj"] == (8, 4.0)  # Linear: network dim
    assert targets["up_blocks.0.resnets.0.conv_shortcut"] == (8, 4.0)  # 1x1: network dim
    assert targets["down_blocks.0.downsamplers.0.conv"] == (4, 1.0)
    assert targets["up_blocks.0.upsamplers.0.conv"] == (4, 1.0)


def test_attach_on_full_sd15_gives_one_down_and_one_up_weight_per_module():
    unet, text_encoder = sd15_unet_on_meta(), sd15_text_encoder_on_meta()
    handles = sd1_attach(unet, text_encoder, NetworkParams())
    assert len(handles.params(("unet",))) == 2 * 192
    assert len(handles.params(("text_encoder",))) == 2 * 72


def test_targets_are_the_same_after_lora_is_attached():
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    before = unet_targets(unet, LOCON), clip_targets(text_encoder, LOCON)
    sd1_attach(unet, text_encoder, LOCON)
    assert (unet_targets(unet, LOCON), clip_targets(text_encoder, LOCON)) == before


def test_a_fresh_lora_leaves_the_model_unchanged():
    reference = _unet_out(tiny_unet())
    unet = tiny_unet()
    sd1_attach(unet, tiny_text_encoder(), LOCON)
    assert torch.equal(_unet_out(unet), reference)


def test_only_lora_weights_train_in_two_groups():
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    handles = sd1_attach(unet, text_encoder, LOCON)
    trainable = {id(p) for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad}
    unet_ids = {id(p) for p in handles.params(("unet",))}
    te_ids = {id(p) for p in handles.params(("text_encoder",))}
    assert trainable == unet_ids | te_ids and not unet_ids & te_ids
    assert len(unet_ids) == 2 * len(handles.targets["unet"])
    assert all(p.dtype == torch.float32 for p in handles.params(("unet",)))


def test_lora_scale_is_kohya_alpha_over_rank():
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    handles = sd1_attach(unet, text_encoder, LOCON)
    attn = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    assert attn.scaling[handles.adapter] == 2.0 / 4
    conv = unet.get_submodule("down_blocks.0.resnets.0.conv1")
    assert conv.scaling[handles.adapter] == 3.0 / 2 and conv.r[handles.adapter] == 2
    fc = text_encoder.get_submodule("encoder.layers.1.mlp.fc2")
    assert fc.scaling[handles.adapter] == 0.5


def test_alpha_zero_means_alpha_equals_rank_as_in_kohya():
    targets = unet_targets(tiny_unet(), NetworkParams(dim=4, alpha=0.0))
    assert set(targets.values()) == {(4, 4.0)}


def test_lora_output_is_w_x_plus_up_down_x_times_alpha_over_rank():
    unet = tiny_unet()
    handles = sd1_attach(unet, tiny_text_encoder(), LOCON)
    _randomise(handles.params(("unet",)))
    layer = unet.get_submodule("down_blocks.0.resnets.0.conv1")
    down, up = handles.down_up(layer)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        expected = layer.base_layer(x) + F.conv2d(F.conv2d(x, down, padding=1), up) * (3.0 / 2)
        assert torch.allclose(layer(x), expected, atol=1e-6)


def test_text_encoder_can_be_left_without_lora():
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    handles = sd1_attach(unet, text_encoder, NetworkParams(train_text_encoder=False))
    assert "text_encoder" not in handles.targets and handles.params(("text_encoder",)) == []
    assert not any("lora_" in name for name, _ in text_encoder.named_parameters())
    assert not any(p.requires_grad for p in text_encoder.parameters())


def test_nothing_to_train_is_an_error():
    with pytest.raises(LoraError, match="nothing to train"):
        sd1_attach(tiny_unet(), tiny_text_encoder(), NetworkParams(train_unet=False, train_text_encoder=False))


def test_dropout_acts_on_the_hidden_activations_like_kohyas_network_dropout():
    unet = tiny_unet()
    handles = sd1_attach(unet, tiny_text_encoder(), NetworkParams(dim=4, alpha=2.0, dropout=0.5))
    _randomise(handles.params(("unet",)))
    layer = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    down, up = handles.down_up(layer)
    x = torch.randn(3, 5, layer.in_features)
    layer.train()
    with torch.no_grad():
        torch.manual_seed(7)
        got = layer(x)
        torch.manual_seed(7)
        expected = layer.base_layer(x) + F.linear(F.dropout(F.linear(x, down), p=0.5), up) * 0.5
    assert torch.allclose(got, expected, atol=1e-6)
    layer.eval()
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.base_layer(x) + F.linear(F.linear(x, down), up) * 0.5, atol=1e-6)


def test_a_backward_pass_reaches_the_lora_weights_and_no_base_weight():
    unet, text_encoder = tiny_unet(), tiny_text_encoder()
    handles = sd1_attach(unet, text_encoder, LOCON)
    unet.train()
    # 16x16 latents: at 8x8 the mid block sees one token, where self-attention's q and k
    # cancel out of the softmax and rightly get no gradient.
    sample, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    context = text_encoder(torch.randint(0, 49406, (2, 77)))[0]
    unet(sample, t, encoder_hidden_states=context).sample.square().mean().backward()
    ups = handles.params(("unet",))[1::2] + handles.params(("text_encoder",))[1::2]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ups)  # B starts at 0, A gets none yet
    assert all(p.grad is None for m in (unet, text_encoder) for n, p in m.named_parameters() if "lora_" not in n)
