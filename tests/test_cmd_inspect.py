"""``lorakiln inspect``: what a LoRA file holds, from our own files and from other tools'."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.models.sd1 import FAMILY as SD1
from core.cli.main import main
from core.kohya.lora_info import InspectError, inspect_lora
from core.config.schema import Duration, NetworkParams, NetworkType, OptimizerType, SubsetParams, TrainConfig
from core.kohya.lora_format import to_kohya_state_dict
from core.kohya.metadata import build_metadata, save_lora_file
from core.data.plan import plan_dataset
from tests.tiny_sd import sd1_attach, tiny_text_encoder, tiny_unet

STARTED, FINISHED = 1_700_000_000.0, 1_700_000_090.0


def _image(path: Path, size: tuple[int, int], caption: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 60, 30)).save(path)
    path.with_suffix(".txt").write_text(caption, "utf-8")


def _lora(network: NetworkParams) -> tuple[dict[str, torch.Tensor], int, int]:
    handles = sd1_attach(tiny_unet(0), tiny_text_encoder(1), network)
    return to_kohya_state_dict(handles, SD1, torch.float16), len(handles.targets["unet"]), len(handles.targets["text_encoder"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, int, int]:
    """A LoRA file saved as training saves it: Kohya tensors in fp16 and the full metadata."""
    root = tmp_path_factory.mktemp("inspect")
    _image(root / "train" / "3_cat" / "a.png", (512, 512), "cat, red")
    _image(root / "train" / "3_cat" / "b.png", (512, 768), "cat, blue")
    _image(root / "train" / "2_dog" / "c.png", (768, 512), "dog, red")
    config = TrainConfig()
    config.network = NetworkParams(dim=4, alpha=2.0)
    config.dataset.subsets = [SubsetParams(image_dir=str(root / "train"), kohya_layout=True)]
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 2
    config.optimizer.type = OptimizerType.ADAMW
    config.output.output_name = "kiln_cat"
    plan = plan_dataset(config.dataset, config.training)
    meta = build_metadata(config, plan, family=SD1, epoch=2, step=8, session_id="s-42", training_started_at=STARTED,
                          training_finished_at=FINISHED, model_name="/models/v1-5-pruned.safetensors",
                          title="Kiln cat")
    tensors, n_unet, n_te = _lora(config.network)
    path = root / "kiln_cat.safetensors"
    save_lora_file(path, tensors, meta)
    return path, n_unet, n_te


def _local(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def test_text_shows_the_file_the_network_and_the_training(trained, capsys):
    path, n_unet, n_te = trained
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kiln_cat.safetensors  (")
    assert "architecture      SD 1.x" in out
    assert f"network           LoRA: {n_unet + n_te} modules ({n_unet} U-Net, {n_te} text encoder)" in out
    assert "dim / alpha       4 / 2" in out and "precision         fp16" in out
    assert "base model        v1-5-pruned.safetensors" in out and "resolution        512x512" in out
    assert "optimizer         torch.optim.adamw.AdamW(" in out and "epochs            2" in out
    assert "3_cat: 3 repeats, 2 images" in out and "2_dog: 2 repeats, 1 images" in out
    assert "512x512: 3" in out and "cat (2), red (2), blue (1), dog (1)" in out
    assert f"started           {_local(STARTED)}" in out and "duration (s)      90.0" in out
    assert "(matches the file)" in out


def test_json_holds_the_same_as_plain_values(trained, capsys):
    path, n_unet, n_te = trained
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(inspect_lora(path)))  # one dict for text, JSON and the GUI
    assert info["modules"] == {"total": n_unet + n_te, "unet": n_unet, "text_encoder": n_te}
    assert (info["architecture"], info["network"], info["dim"], info["alpha"]) == ("sd1", "LoRA", [4], [2.0])
    assert info["precision"] == ["fp16"] and info["file_size"] == path.stat().st_size
    assert info["training"]["ss_num_epochs"] == 2 and info["training"]["ss_learning_rate"] == 1e-4
    assert info["top_tags"][:2] == [["cat", 2], ["red", 2]]
    assert {d["name"]: (d["repeats"], d["images"]) for d in info["dataset_dirs"]} == {"3_cat": (3, 2), "2_dog": (2, 1)}
    assert sum(b["count"] for b in info["buckets"]) == 3 * 2 + 2 * 1
    assert info["session"] == {"id": "s-42", "started": _local(STARTED), "finished": _local(FINISHED),
                               "seconds": 90.0}
    assert info["hashes"]["matches"] is True and info["metadata"]["ss_output_name"] == "kiln_cat"


def test_a_locon_file_from_another_tool_without_metadata(tmp_path, capsys):
    tensors, _, _ = _lora(NetworkParams(type=NetworkType.LOCON, dim=4, alpha=4.0, conv_dim=2, conv_alpha=1.0))
    path = tmp_path / "other.safetensors"
    save_file({k: v.float() for k, v in tensors.items()}, str(path))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "network           LoCon" in out and "conv dim / alpha  2 / 1" in out
    assert "precision         float" in out and "training: no training metadata in this file" in out
    assert "sshs_model_hash   -" in out and "computed          " in out


def test_a_hash_that_does_not_match_is_pointed_out(tmp_path):
    tensors, _, _ = _lora(NetworkParams(dim=2, alpha=1.0))
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={"sshs_model_hash": "0" * 64})
    assert inspect_lora(path)["hashes"]["matches"] is False


def test_a_safetensors_that_is_not_a_lora_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, str(path))
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "vae.safetensors: not a Kohya-format LoRA" in err and "decoder.conv_in.weight" in err


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_a_broken_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(InspectError, match="broken.safetensors: cannot read it as a LoRA file"):
        inspect_lora(path)


def test_a_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
