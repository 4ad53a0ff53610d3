"""`lorakiln --self-test`: one line and exit 0 on a working install, the reason and non-zero otherwise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.training import self_test
from core.training.self_test import SelfTestFailure, SelfTestResult, check_lora_file, run_self_test

ROOT = Path(__file__).resolve().parent.parent
PASS_LINE = re.compile(r"^LoRA Kiln \S+ self-test \(from source\) passed: demo model, \d+ images in \d+ buckets, "
                       r"4 steps \(loss \d+\.\d+\), 1 sample, LoRA with \d+ tensors; \d+\.\d s$")


def _self_test(tmp_dir: Path):
    environ = {**os.environ, "TMPDIR": str(tmp_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "core.cli", "--self-test"], capture_output=True, text=True,
                          cwd=ROOT, env=environ, timeout=600)


@pytest.mark.slow
def test_self_test_passes_prints_one_line_and_cleans_up(tmp_path):
    result = _self_test(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and PASS_LINE.match(lines[0]), result.stdout
    # Its temporary folder is removed after a pass (torch may leave its own caches there).
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lorakiln-self-test-")]
    assert self_test.result_file().read_text(encoding="utf-8").strip() == lines[0]


def test_unusable_temp_folder_fails_with_the_folder_named(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    result = _self_test(not_a_folder)
    assert result.returncode == 1
    line = result.stdout.strip()
    assert "self-test (from source) FAILED while creating a temporary folder in " + str(not_a_folder) in line
    assert "TMPDIR" in line and "\n" not in line
    assert "NotADirectoryError" in self_test.result_file().read_text(encoding="utf-8")


def test_self_test_takes_no_command():
    result = subprocess.run([sys.executable, "-m", "core.cli", "--self-test", "check", "demo"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "--self-test runs on its own" in result.stderr


def test_a_failed_training_is_reported_with_its_summary_and_files_kept(tmp_path, monkeypatch):
    from core.training import engine
    from core.training.events import Failed

    class FailingTrainer:
        def __init__(self, config, sink, control=None, **kwargs):
            self.config, self.sink, self.plan = config, sink, None

        def run(self):
            log_path = Path(self.config.output.output_dir) / "log.txt"
            log_path.write_text("the run log")
            failed = Failed("oom", "out of memory at step 2", ("lower the batch size",), "Traceback: boom",
                            str(log_path), None)
            self.sink.emit(failed)
            return failed

    monkeypatch.setattr(engine, "Trainer", FailingTrainer)
    result = run_self_test(work_root=tmp_path)
    assert not result.ok
    assert "FAILED while training (oom): out of memory at step 2; run log: " in result.line
    assert "lower the batch size" in result.details and "Traceback: boom" in result.details
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("lorakiln-self-test-")]
    assert len(kept) == 1 and f"files kept in {kept[0]}" in result.line
    assert (kept[0] / "log.txt").read_text() == "the run log"


def _lora_file(path: Path, up_value: float, dim: str = "4") -> Path:
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(4, 8),
               "lora_unet_x.lora_up.weight": torch.full((8, 4), up_value),
               "lora_unet_x.alpha": torch.tensor(4.0)}
    save_file(tensors, str(path), metadata={"ss_network_dim": dim})
    return path


def test_lora_check_counts_the_tensors_of_a_trained_file(tmp_path):
    assert check_lora_file(_lora_file(tmp_path / "ok.safetensors", 0.01), expected_dim=4) == 3


def test_lora_check_refuses_an_untrained_file(tmp_path):
    with pytest.raises(SelfTestFailure, match="untrained: every lora_up weight is still zero"):
        check_lora_file(_lora_file(tmp_path / "zero.safetensors", 0.0), expected_dim=4)


def test_lora_check_refuses_non_finite_values_and_a_wrong_dim(tmp_path):
    with pytest.raises(SelfTestFailure, match="non-finite values in lora_unet_x.lora_up.weight"):
        check_lora_file(_lora_file(tmp_path / "nan.safetensors", float("nan")), expected_dim=4)
    with pytest.raises(SelfTestFailure, match="network dim '8', expected 4"):
        check_lora_file(_lora_file(tmp_path / "dim.safetensors", 0.01, dim="8"), expected_dim=4)


def test_an_unwritable_log_folder_does_not_change_the_result(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "log-is-a-file"
    blocker.write_text("x")
    monkeypatch.setattr(self_test, "result_file", lambda: blocker / "self-test.txt")
    monkeypatch.setattr(self_test, "run_self_test", lambda keep=False: SelfTestResult(True, "all good"))
    assert self_test.main() == 0
    out, err = capsys.readouterr()
    assert out == "all good\n"
    assert f"could not record the result in {blocker / 'self-test.txt'}" in err
