"""Issue 9, item 1: the process is killed (SIGKILL, no clean-up of any kind) in the middle of
writing a checkpoint, the training state, a metrics line or a preset. The file that was
there before is intact and loads, and the run resumes from its last saved state.

Each fault is real: a child process runs the actual code (the ``lorakiln train`` command,
``save_preset``), paused at the worst moment by a patch that exists only in the child,
and the test kills it there."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.config.presets import dumps_preset, load_preset, save_preset
from core.training.run_folder import read_metrics
from core.training.checkpoint import load_state
from core.training.engine import Trainer
from core.training.events import Finished, ListSink
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parent.parent
KILL_TIMEOUT_S = 300

# The child: pauses forever just before the rename that would complete the atomic write of
# a file named TARGET (or in the middle of the metrics line of step TARGET), after telling
# the parent through the MARKER file; then the parent kills it.
CHILD = r"""
import os, sys, time
mode, target, marker = sys.argv[1:4]

def hold(note):
    with open(marker + ".part", "w") as handle:
        handle.write(note)
    os.replace(marker + ".part", marker)
    time.sleep(3600)

if mode == "rename":
    real_replace = os.replace

    def paused_replace(source, destination):
        if os.path.basename(destination) == target:
            hold(str(source))
        real_replace(source, destination)

    os.replace = paused_replace
elif mode == "metrics":
    import json
    from core.training import run_folder as runs
    real_write = runs.MetricsWriter.write

    def torn_write(self, record):
        if record.get("type") == "step" and record.get("step") == int(target):
            line = json.dumps(record) + "\n"
            self._file.write(line[: len(line) // 2])
            self._file.flush()
            hold(line)
        real_write(self, record)

    runs.MetricsWriter.write = torn_write

if sys.argv[4] == "train":
    from core.cli.main import main
    sys.exit(main(["train", sys.argv[5], "--quiet"]))
from core.config.presets import load_preset, save_preset
loaded = load_preset(sys.argv[5])
loaded.config.network.dim = 64
save_preset(loaded.config, sys.argv[5])
"""


def kill_while(tmp_path, mode, target, *command):
    """Run the child until it holds at the fault, SIGKILL it there; returns its note."""
    marker = tmp_path / "holding"
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, target, str(marker), *command], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before the fault:\n{child.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the fault")
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return marker.read_text()


def training_preset(tmp_path):
    config = tiny_config(tmp_path)  # 6 steps
    config.output.save_every_n_steps = 2
    config.output.save_state = True
    preset = tmp_path / "tiny.toml"
    save_preset(config, preset)
    return preset


def the_run_folder(tmp_path):
    (run,) = (tmp_path / "runs").iterdir()
    return run


def step_losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"}


def resume(run):
    """What ``lorakiln train --resume RUN`` does after loading the run's own config.toml."""
    result = Trainer(load_preset(run / "config.toml").config, ListSink(), resume_from=run).run()
    assert isinstance(result, Finished), getattr(result, "traceback", result)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tiny-step00000004.safetensors", "step-00000004.safetensors"])
def test_killed_while_saving_a_checkpoint_keeps_the_last_one_and_resumes(tmp_path, target):
    temporary = Path(kill_while(tmp_path, "rename", target, "train", str(training_preset(tmp_path))))
    run = the_run_folder(tmp_path)
    assert temporary.is_file() and temporary.parent in (run / "checkpoints", run / "state")  # killed mid-write
    assert load_file(run / "checkpoints" / "tiny-step00000002.safetensors")
    assert load_state(run / "state" / "step-00000002.safetensors").step == 2
    assert sorted(p.name for p in (run / "state").glob("step-*")) == ["step-00000002.safetensors"]
    lora_4 = run / "checkpoints" / "tiny-step00000004.safetensors"
    if target == "step-00000004.safetensors":  # the LoRA of step 4 was complete before its state began
        assert load_file(lora_4)
    else:
        assert not lora_4.exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # nobody could say otherwise
    killed = step_losses(run)
    assert sorted(killed) == [1, 2, 3, 4]

    result = resume(run)
    assert result.reason == "completed" and result.steps == 6
    assert not temporary.exists() and not list(run.glob("**/.*.tmp"))
    resumed = step_losses(run)
    recorded = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    assert recorded == [1, 2, 3, 4, 5, 6]  # one curve: steps 3 and 4 were trained again, recorded once
    assert resumed[3] == pytest.approx(killed[3], rel=1e-5) and resumed[4] == pytest.approx(killed[4], rel=1e-5)
    assert load_file(run / "tiny.safetensors")
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_killed_in_the_middle_of_a_metrics_line_resumes_with_a_clean_file(tmp_path):
    line = kill_while(tmp_path, "metrics", "5", "train", str(training_preset(tmp_path)))
    run = the_run_folder(tmp_path)
    raw = (run / "metrics.jsonl").read_text()
    assert not raw.endswith("\n") and line.startswith(raw.rsplit("\n", 1)[-1])  # half a line, as killed
    assert sorted(step_losses(run)) == [1, 2, 3, 4]  # readers skip the torn line

    assert resume(run).steps == 6
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(text) for text in lines]  # every line whole: nothing glued to the torn half
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 3, 4, 5, 6]


def test_killed_while_saving_a_preset_keeps_the_old_preset(tmp_path):
    config = tiny_config(tmp_path)
    preset = tmp_path / "mine.toml"
    save_preset(config, preset, description="before")
    before = preset.read_bytes()
    temporary = Path(kill_while(tmp_path, "rename", "mine.toml", "preset", str(preset)))
    assert temporary.is_file() and temporary.parent == tmp_path and temporary.read_bytes() != before
    assert preset.read_bytes() == before
    loaded = load_preset(preset)
    assert loaded.description == "before" and loaded.config.network.dim == config.network.dim
    assert dumps_preset(loaded.config) == dumps_preset(config)
