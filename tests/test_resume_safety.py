"""Issue 12: a run folder from anywhere runs no code when resumed; a resume that has nothing
to do, or cannot apply, leaves the folder exactly as it was; one process trains a run folder
at a time; a folder deleted under a run is created again."""

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from core.config.presets import load_preset
from core.training.checkpoint import TrainingState, load_state, save_state
from core.training.engine import Trainer
from core.training.events import Failed, Finished, ListSink, Status, StepMetrics
from core.training.run_lock import LOCK_FILE, RunFolderBusy, RunFolderLock, holder
from core.training.state_file import StateFileError, decode_state, encode_state, read_state_file, write_state_bytes
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def trained_run(tmp_path: Path, *, steps: int = 4, save_state: bool = True, **changes) -> Path:
    config = tiny_config(tmp_path, steps=steps)
    config.output.save_state = save_state
    for key, value in changes.items():
        group, name = key.split("__")
        setattr(getattr(config, group), name, value)
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed", result
    return Path(result.run_dir)


def resume_run(run: Path, **overrides) -> tuple[Finished | Failed, ListSink]:
    config = load_preset(run / "config.toml").config
    for key, value in overrides.items():
        group, name = key.split("__")
        setattr(getattr(config, group), name, value)
    sink = ListSink()
    return Trainer(config, sink, resume_from=run).run(), sink


# ---------------------------------------------------------------- the state file format

def test_the_state_format_keeps_tuples_int_keys_odd_floats_and_tensors():
    value = {"rng": (3, tuple(range(5)), None), "optimizer": {"state": {0: {"exp_avg": torch.ones(2, 3)},
                                                                         7: {"step": torch.tensor(4.0)}},
                                                               "param_groups": [{"betas": (0.9, 0.99), "lr": 1e-4,
                                                                                 "d": float("inf"), "params": [0, 7]}]},
             "bf16": torch.arange(4, dtype=torch.bfloat16), "gen": torch.zeros(8, dtype=torch.uint8),
             "flag": True, "name": "$tensor lookalike", "nested": [[1.5, None]]}
    text, tensors = encode_state(value)
    back = decode_state(text, tensors)
    assert back["rng"] == (3, (0, 1, 2, 3, 4), None) and isinstance(back["rng"][1], tuple)
    assert set(back["optimizer"]["state"]) == {0, 7}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2, 3))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["optimizer"]["param_groups"][0]["d"] == float("inf")
    assert back["bf16"].dtype == torch.bfloat16 and back["gen"].dtype == torch.uint8
    assert back["flag"] is True and back["name"] == "$tensor lookalike" and back["nested"] == [[1.5, None]]


def test_the_state_format_refuses_values_it_cannot_hold_when_saving():
    with pytest.raises(StateFileError, match="state.optimizer.hook.*function"):
        encode_state({"optimizer": {"hook": print}})


def test_a_state_file_from_another_program_is_refused_by_name(tmp_path):
    import safetensors.torch

    path = tmp_path / "step-00000002.safetensors"
    path.write_bytes(safetensors.torch.save({"x": torch.zeros(1)}, metadata={"format": "pt"}))
    with pytest.raises(StateFileError, match="step-00000002.safetensors.*not a LoRA Kiln training state"):
        read_state_file(path)
    path.write_bytes(write_state_bytes({"a": 1})[:40])
    with pytest.raises(StateFileError, match="damaged or cut short"):
        read_state_file(path)


def test_a_state_file_round_trips_through_save_and_load(tmp_path):
    state = TrainingState(step=3, epoch=2, batch_in_epoch=1, wall_seconds=1.5,
                          lora={"unet": {"a.lora_down.weight": torch.randn(2, 4)}},
                          optimizer={"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1,
                                                                                                   "params": [0]}]},
                          scheduler={"last_epoch": 3, "lr_lambdas": [None]}, generator=torch.Generator().get_state(),
                          torch_rng=torch.get_rng_state(), python_rng=__import__("random").getstate(),
                          loss_window=[0.5, float("nan")], epoch_losses=[0.25])
    path = save_state(tmp_path / "state", state)
    assert path.name == "step-00000003.safetensors"
    back = load_state(path)
    assert back.step == 3 and back.python_rng == state.python_rng and back.epoch_losses == [0.25]
    assert torch.equal(back.lora["unet"]["a.lora_down.weight"], state.lora["unet"]["a.lora_down.weight"])
    assert back.optimizer["state"][0]["step"].item() == 3.0


# ---------------------------------------------------------------- defect 1: no code runs

class _Payload:
    """Unpickling this creates the marker file: what a hostile state file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_a_crafted_pickled_state_file_is_refused_and_runs_no_code(tmp_path):
    run = trained_run(tmp_path, steps=2)
    marker = tmp_path / "code-ran"
    with open(run / "state" / "step-00000009.pt", "wb") as handle:  # the latest state, by its step
        pickle.dump({"step": 9, "payload": _Payload(str(marker))}, handle)
    before = snapshot(run)
    result = subprocess.run([sys.executable, "-m", "core.cli", "train", "--resume", str(run), "--quiet"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert not marker.exists()
    assert result.returncode == 1
    assert "step-00000009.pt" in result.stderr and "could run code" in result.stderr
    assert "weights_only=False" not in result.stderr + result.stdout
    assert snapshot(run) == before


def test_a_pickled_state_file_with_code_is_refused_in_the_engine_too(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "state"
    folder.mkdir()
    torch.save({"step": 1, "payload": _Payload(str(marker))}, folder / "step-00000001.pt")
    from core.training.checkpoint import StateError

    with pytest.raises(StateError, match="could run code") as caught:
        load_state(folder / "step-00000001.pt")
    assert not marker.exists() and "weights_only" not in str(caught.value)


# ---------------------------------------------------------------- defects 2 and 3

def test_resuming_a_run_whose_state_is_at_the_last_step_trains_nothing_and_changes_nothing(tmp_path):
    run = trained_run(tmp_path, steps=4)
    before = snapshot(run)
    result, sink = resume_run(run)
    assert isinstance(result, Finished) and result.reason == "already_complete", result
    assert result.steps == 4 and result.lora_path == str(run / "tiny.safetensors")
    assert not sink.of(StepMetrics)
    assert any("already complete" in e.text for e in sink.of(Status))
    assert snapshot(run) == before


def test_a_run_killed_between_its_final_state_and_its_exit_is_complete_too(tmp_path):
    run = trained_run(tmp_path, steps=4)
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "running"  # the kill landed before the summary was completed
    (run / "summary.json").write_text(json.dumps(summary))
    before = snapshot(run)
    result, _ = resume_run(run)
    assert result.reason == "already_complete" and snapshot(run) == before


def test_the_cli_says_already_complete_and_exits_cleanly(tmp_path):
    run = trained_run(tmp_path, steps=2)
    before = snapshot(run)
    result = subprocess.run([sys.executable, "-m", "core.cli", "train", "--resume", str(run)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout and "nothing was trained or changed" in result.stdout
    assert snapshot(run) == before


def test_a_refused_resume_of_a_run_without_state_keeps_its_record(tmp_path):
    run = trained_run(tmp_path, steps=2, save_state=False)
    before = snapshot(run)
    result, sink = resume_run(run)
    assert isinstance(result, Failed) and result.kind == "resume"
    assert "no saved training state" in result.summary and "Nothing was changed" in result.summary
    assert result.log_path is None and not any(hasattr(e, "run_dir") and e.run_dir == str(run)
                                                  for e in sink.events if type(e).__name__ == "RunStarted")
    assert snapshot(run) == before
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("change, named", [({"network__dim": 8}, "network.dim"),
                                           ({"optimizer__type": "Prodigy", "optimizer__learning_rate": 1.0},
                                            "optimizer.type")])
def test_a_resume_with_changes_that_cannot_apply_is_refused_and_writes_nothing(tmp_path, change, named):
    run = trained_run(tmp_path, steps=2)
    from core.config.schema import OptimizerType

    change = {k: OptimizerType(v) if k == "optimizer__type" else v for k, v in change.items()}
    before = snapshot(run)
    result, _ = resume_run(run, training__max_train_steps=4, **change)
    assert isinstance(result, Failed) and result.kind == "resume", result
    assert named in result.summary and "Nothing was changed" in result.summary
    assert snapshot(run) == before


def test_a_resume_with_more_steps_trains_on_from_the_saved_step(tmp_path):
    run = trained_run(tmp_path, steps=2)
    result, sink = resume_run(run, training__max_train_steps=4)
    assert result.reason == "completed" and result.steps == 4
    assert [e.step for e in sink.of(StepMetrics)] == [3, 4]
    assert not (run / LOCK_FILE).exists()  # released: the folder is free again, and left as it was


# ---------------------------------------------------------------- defect 6: one process per folder

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from core.training.run_lock import RunFolderLock
    lock = RunFolderLock(Path(sys.argv[1])).acquire()
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
""")


def _hold_in_another_process(folder: Path, tmp_path: Path) -> subprocess.Popen:
    ready = tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ready)], cwd=ROOT)
    deadline = time.time() + 120
    while not ready.exists():
        assert process.poll() is None and time.time() < deadline, "the holder process did not start"
        time.sleep(0.05)
    return process


def test_a_live_process_keeps_its_run_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    process = _hold_in_another_process(folder, tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=f"process {process.pid}"):
            RunFolderLock(folder).acquire()
        assert holder(folder)["pid"] == process.pid
    finally:
        process.kill()
        process.wait(timeout=60)
    assert holder(folder) is None
    lock = RunFolderLock(folder).acquire()  # the dead holder's lock is taken over
    assert lock.previous["pid"] == process.pid
    lock.release()


def test_resuming_a_run_that_another_live_process_trains_is_refused_and_changes_nothing(tmp_path):
    run = trained_run(tmp_path, steps=2)
    process = _hold_in_another_process(run, tmp_path)
    try:
        before = snapshot(run)
        result, _ = resume_run(run, training__max_train_steps=4)
        assert isinstance(result, Failed) and result.kind == "busy", result
        assert f"process {process.pid}" in result.summary and "Nothing was changed" in result.summary
        assert snapshot(run) == before
    finally:
        process.kill()
        process.wait(timeout=60)
    result, _ = resume_run(run, training__max_train_steps=4)  # its holder is gone: the folder is free
    assert result.reason == "completed" and result.steps == 4


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_train_it_once(tmp_path):
    config = tiny_config(tmp_path, steps=2)
    config.output.save_state = True
    run = Path(Trainer(config, ListSink()).run().run_dir)
    from core.config.overrides import apply_overrides  # noqa: F401 - the CLI's --set is what is used below

    command = [sys.executable, "-m", "core.cli", "train", "--resume", str(run), "--quiet",
               "--set", "training.max_train_steps=40"]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for _, _, code in outcomes)
    assert codes == [0, 1], outcomes
    refused = next(err for _, err, code in outcomes if code == 1)
    assert "in use by process" in refused
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "step"]
    assert steps == list(range(1, 41))  # one curve: no step recorded twice


# ---------------------------------------------------------------- defect 8: long names

def test_the_longest_name_check_allows_passes_every_save_of_a_run(tmp_path):
    from core.training.validation import MAX_FILE_NAME_BYTES, longest_written_name_bytes, validate

    name = "é" + "n" * (MAX_FILE_NAME_BYTES - longest_written_name_bytes("", 6) - 2)  # é is 2 bytes
    config = tiny_config(tmp_path, steps=4)
    config.output.output_name = name
    config.output.save_every_n_steps = 2
    config.output.save_state = True
    assert not [p for p in validate(config) if p.path == "output.output_name"]
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed", result
    assert (Path(result.run_dir) / "checkpoints" / f"{name}-step00000002.safetensors").is_file()

    config.output.output_name = name + "n"
    (problem,) = [p for p in validate(config) if p.path == "output.output_name"]
    assert "too long" in problem.message and f"at most {len(name.encode())} bytes" in problem.message


def test_a_name_too_long_for_the_temporary_files_is_refused_before_training(tmp_path):
    config = tiny_config(tmp_path, steps=2)
    config.output.output_name = "x" * 220
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Failed) and result.kind == "config"
    assert any("output.output_name" in line and "too long" in line for line in result.advice)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------- defect 11: folder deleted

class DeleteTheRunFolderAt:
    def __init__(self, step: int) -> None:
        self.step = step
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)
        if isinstance(event, StepMetrics) and event.step == self.step:
            import shutil

            run_dir = next(e.run_dir for e in self.events if type(e).__name__ == "RunStarted")
            shutil.rmtree(run_dir)


def test_a_run_folder_deleted_mid_run_is_created_again_and_the_lora_saved(tmp_path):
    config = tiny_config(tmp_path, steps=6)
    config.output.save_every_n_steps = 2
    sink = DeleteTheRunFolderAt(3)
    result = Trainer(config, sink).run()
    assert isinstance(result, Finished) and result.reason == "completed", result
    run = Path(result.run_dir)
    assert (run / "tiny.safetensors").is_file() and (run / "checkpoints" / "tiny-step00000004.safetensors").is_file()
    assert not (run / "checkpoints" / "tiny-step00000002.safetensors").exists()  # lost with the folder
    told = [e.text for e in sink.events if isinstance(e, Status) and "was deleted during training" in e.text]
    assert told and "created again" in told[0]
    assert "was deleted during training" in (run / "log.txt").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert (run / "config.toml").is_file()
    recorded = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["type"] == "step"]
    assert recorded == [3, 4, 5, 6]


def test_a_run_folder_that_cannot_be_created_again_stops_the_run_saying_so(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, steps=6)
    config.output.save_every_n_steps = 2
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name.endswith("-tiny") and not self.exists() and any(
                isinstance(e, StepMetrics) for e in sink.events):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    sink = DeleteTheRunFolderAt(3)
    result = Trainer(config, sink).run()
    assert isinstance(result, Failed) and result.kind == "disk", result
    assert "was deleted during training (at step 3)" in result.summary
    assert "could not be created again" in result.summary and "could not be saved" in result.summary
    assert result.log_path is None and result.last_checkpoint is None  # nothing that no longer exists


# ---------------------------------------------------------------- advice for a run that ended early

def test_the_advice_for_an_ended_run_resumes_only_from_a_saved_state(tmp_path):
    from core.training.checkpoint import how_to_continue

    run = trained_run(tmp_path / "with", steps=2)
    assert f'lorakiln train --resume "{run}"' in how_to_continue(run) and "step 2" in how_to_continue(run)
    bare = trained_run(tmp_path / "without", steps=2, save_state=False)
    advice = how_to_continue(bare)
    assert "--resume" not in advice and "cannot be resumed" in advice and str(bare / "config.toml") in advice
    assert "--resume" not in how_to_continue(None) and "--resume" not in how_to_continue("x" * 5000)
