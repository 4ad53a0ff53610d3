"""sd-scripts' rank and module dropout of LoRA modules: training only, never when sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.config.schema import NetworkParams, NetworkType, TrainConfig
from core.training.validation import validate
from tests.tiny_sd import sd1_attach, tiny_text_encoder, tiny_unet

LAYER = "mid_block.attentions.0.transformer_blocks.0.ff.net.2"


def _attached(**network):
    unet = tiny_unet()
    handles = sd1_attach(unet, tiny_text_encoder(), NetworkParams(dim=8, alpha=4.0, **network))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in handles.params(("unet",)):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    layer = unet.get_submodule(LAYER)
    return layer, *handles.down_up(layer)


def test_rank_dropout_zeroes_whole_ranks_per_sample_and_rescales_the_rest():
    layer, down, up = _attached(rank_dropout=0.25)
    hidden = []
    layer.lora_A["kiln"].register_forward_hook(lambda m, i, o: hidden.append(o))
    x = torch.randn(4000, 3, layer.in_features, generator=torch.Generator().manual_seed(1))
    layer.train()
    with torch.no_grad():
        got = layer(x)
    plain = F.linear(x, down)
    ratio = hidden[-1] / plain  # per (sample, token, rank): 0 or 1 / (1 - 0.25)
    assert torch.allclose(ratio, ratio[:, :1, :].expand_as(ratio))  # one mask a sample, the same on every token
    kept = ratio[:, 0, :]
    assert torch.all((kept == 0) | torch.isclose(kept, torch.tensor(1 / 0.75), atol=1e-4))
    assert (kept == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert kept.mean().item() == pytest.approx(1.0, abs=0.02)  # the rescale keeps the expected output
    assert torch.allclose(got, layer.base_layer(x) + F.linear(hidden[-1], up) * 0.5, atol=1e-5)


def test_rank_dropout_masks_a_convolution_on_its_channel_axis():
    from core.models.lora import _dropout_hook

    hook = _dropout_hook(NetworkParams(rank_dropout=0.5))
    module = torch.nn.Identity().train()
    torch.manual_seed(3)
    out = hook(module, (), torch.ones(64, 8, 5, 5))
    per_rank = out[:, :, :1, :1].expand_as(out)
    assert torch.equal(out, per_rank)  # constant over the image
    assert set(torch.unique(out).tolist()) == {0.0, 2.0}


def test_module_dropout_skips_the_whole_module_at_random_in_training():
    layer, down, up = _attached(module_dropout=0.5)
    x = torch.randn(2, 3, layer.in_features)
    base = layer.base_layer(x)
    full = base + F.linear(F.linear(x, down), up) * 0.5
    layer.train()
    torch.manual_seed(5)
    with torch.no_grad():
        outs = [layer(x) for _ in range(400)]
    skipped = sum(torch.allclose(o, base, atol=1e-6) for o in outs)
    whole = sum(torch.allclose(o, full, atol=1e-6) for o in outs)
    assert skipped + whole == 400  # all or nothing, per call
    assert skipped / 400 == pytest.approx(0.5, abs=0.08)


def test_no_dropout_of_any_kind_in_eval_mode_as_when_sampling():
    layer, down, up = _attached(dropout=0.3, rank_dropout=0.5, module_dropout=0.9)
    x = torch.randn(2, 3, layer.in_features)
    layer.eval()
    with torch.no_grad():
        outs = [layer(x) for _ in range(20)]
    expected = layer.base_layer(x) + F.linear(F.linear(x, down), up) * 0.5
    assert all(torch.allclose(o, expected, atol=1e-6) for o in outs)


def test_dropouts_on_lycoris_types_are_refused_by_name():
    config = TrainConfig()
    config.network = NetworkParams(type=NetworkType.LOHA, rank_dropout=0.1, module_dropout=0.1)
    fields = {p.path: p.message for p in validate(config, check_paths=False)}
    assert "LoRA and LoCon only" in fields["network.rank_dropout"]
    assert "network.module_dropout" in fields
