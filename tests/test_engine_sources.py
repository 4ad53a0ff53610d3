"""Training from what users actually have: an original-layout single-file checkpoint,
and the lorakiln train command (including Ctrl+C)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import core.models.sd15_files
from core.models.base_model import build_demo_model
from tests.tiny_sd import write_demo_config_dir
from core.config.presets import save_preset
from core.training.engine import Trainer
from core.training.events import Finished, ListSink
from tests.engine_fixtures import tiny_config
from tests.ldm_checkpoint import write_ldm_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_training_from_an_original_layout_single_file(tmp_path, monkeypatch):
    demo = build_demo_model(3)
    checkpoint = write_ldm_checkpoint(tmp_path / "my model.safetensors", demo.unet, demo.vae,
                                      demo.text_encoders["text_encoder"], extras=True, ema=True)
    # The shipped configs are SD 1.5-sized; this file holds demo-sized weights, so the
    # loader gets a config folder of the demo's shapes (everything else is the real path).
    configs = write_demo_config_dir(tmp_path / "configs")
    monkeypatch.setattr(core.models.sd15_files, "sd15_config_dir", lambda: configs)
    config = tiny_config(tmp_path, steps=3)
    config.model.base_model = str(checkpoint)
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["steps"] == 3 and Path(summary["lora_path"]).is_file()


def _preset(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "tiny.toml"
    save_preset(tiny_config(tmp_path, steps=steps), path)
    return path


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_the_train_command_reports_progress_and_the_lora(tmp_path):
    preset = _preset(tmp_path, steps=4)
    result = subprocess.run([sys.executable, "-m", "core.cli", "train", str(preset), "--set", "network.dim=2",
                             "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "step 4/4" in result.stdout and "completed: 4 steps" in result.stdout
    lora = next((tmp_path / "out").glob("*/tiny.safetensors"))
    from safetensors import safe_open
    with safe_open(str(lora), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "2"


def test_the_train_command_refuses_a_bad_config_with_the_field_named(tmp_path):
    preset = _preset(tmp_path, steps=4)
    result = subprocess.run([sys.executable, "-m", "core.cli", "train", str(preset), "--set", "training.seed=-5"],
                            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert result.returncode == 2 and "training.seed" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_saves_and_resume_finishes(tmp_path):
    preset = _preset(tmp_path, steps=400)
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "train", str(preset)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    deadline = time.time() + 240
    lines = []
    while time.time() < deadline:  # wait until training has really started
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("[") and "step" in line:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert "stopping after this step and saving" in err and "stopped:" in out
    run_dir = next((tmp_path / "runs").iterdir())
    assert (run_dir / "tiny.safetensors").is_file() and list((run_dir / "state").glob("step-*.safetensors"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and 0 < summary["steps"] < 400
    resumed = subprocess.run([sys.executable, "-m", "core.cli", "train", "--resume", str(run_dir), "--quiet",
                              "--set", "training.max_train_steps=" + str(summary["steps"] + 2)],
                             capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"completed: {summary['steps'] + 2} steps" in resumed.stdout


@pytest.mark.slow
def test_two_processes_split_the_batches_and_only_the_main_one_writes(tmp_path):
    # accelerate on a CPU needs MPI for several processes; torchrun starts the same
    # distributed setup (gloo) that `accelerate launch --multi_gpu` starts on GPUs.
    preset = _preset(tmp_path, steps=4)  # 5 batches per epoch -> 3 steps per epoch on 2 processes
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "core.cli", "train", str(preset)],
                            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 steps, 2 epochs, 5 batches per epoch" in result.stdout
    assert result.stdout.count("completed: 4 steps") == 1  # one process reports
    [run_dir] = list((tmp_path / "runs").iterdir())  # one run folder, written by the main process
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert steps == [1, 2, 3, 4]
