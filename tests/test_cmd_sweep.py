"""``lorakiln sweep``: the plan, the runs one after another, Ctrl+C, and the comparison."""

import os
import signal
from pathlib import Path

import pytest

from core.cli import sweep as cmd_sweep
from core.cli.main import main
from core.studies.compare import comparison_table
from core.studies.run_index import load_run
from core.studies.sweep import read_sweep_record
from core.training import engine
from core.training.events import Failed, Finished, RunStarted

# The demo preset made quick: a few steps by count, no warmup, no latent cache to fill,
# no samples or epoch checkpoints.
QUICK = ["--set", "training.duration=steps", "--set", "training.max_train_steps=3",
         "--set", "schedule.warmup_steps=0", "--set", "dataset.latent_cache=off",
         "--set", "sampling.every_n_epochs=0", "--set", "output.save_every_n_epochs=0"]


def _records(out_dir):
    found = list((out_dir / "sweeps").glob("*.json"))
    assert len(found) == 1
    return read_sweep_record(found[0]), found[0]


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["sweep", "demo", "--vary", "dataset.resolution=128,192", *QUICK, "--output-dir", str(out),
                 "--dry-run"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sweep of dataset.resolution: 2 runs into {out}"
    # The demo pictures are all near-square: at 128 px one bucket holds them all, at 192 px
    # the bucket steps (64 px) fit them into several shapes.
    assert lines[1].split()[1:3] == ["dataset.resolution=128", "demo_resolution-128"]
    assert "(1 bucket, 40 batches/epoch, 3 steps in 1 epoch)" in lines[1]
    assert lines[2].split()[1:3] == ["dataset.resolution=192", "demo_resolution-192"]
    assert "3 steps in 1 epoch" in lines[2] and "(1 bucket," not in lines[2]
    assert not out.exists()


@pytest.mark.parametrize("vary, message", [
    ("network.dimm=2,4", "network.dimm: unknown field; did you mean 'dim'?"),
    ("network.dim=2,0", "0: network.dim: 0 is below the minimum of 1"),
    ("schedule.warmup_steps=1,3", "3: schedule.warmup_steps: warmup (3 steps) is not shorter than training"),
])
def test_a_sweep_that_cannot_run_says_why_and_trains_nothing(tmp_path, capsys, vary, message):
    out = tmp_path / "runs"
    assert main(["sweep", "demo", "--vary", vary, *QUICK, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was trained" in err
    assert not out.exists()


class _FakeTrainer:
    """Ends each run as scripted by its LoRA name; 'interrupt' sends this process Ctrl+C."""

    script: dict[str, str] = {}

    def __init__(self, config, sink, control, description=""):
        self.config, self.sink, self.control = config, sink, control

    def run(self):
        name = self.config.output.output_name
        run_dir = os.path.join(self.config.output.output_dir, name)
        os.makedirs(run_dir)
        self.sink.emit(RunStarted(run_dir, name, 3, 1, 3, 3))
        outcome = self.script.get(name, "completed")
        if outcome == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
            outcome = "stopped" if self.control.stop_requested else "completed"
        event = Failed("oom", "out of memory", (), "", None, run_dir) if outcome == "failed" else \
            Finished(outcome, run_dir, None, 3, 1, 2.0)
        self.sink.emit(event)
        return event


@pytest.fixture
def fake_engine(monkeypatch):
    compared = []
    monkeypatch.setattr(engine, "Trainer", _FakeTrainer)
    monkeypatch.setattr(cmd_sweep, "_compare", lambda record, spec, run_dirs: compared.append(run_dirs))
    return compared


def test_ctrl_c_stops_the_current_run_and_skips_the_rest(tmp_path, capsys, fake_engine):
    _FakeTrainer.script = {"demo_dim-2": "interrupt"}
    handler_before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "runs"
    assert main(["sweep", "demo", "--vary", "network.dim=2,4,8", *QUICK, "--output-dir", str(out)]) == 130
    captured = capsys.readouterr()
    assert "the remaining runs are skipped" in captured.err
    assert "[1/3] network.dim=2 stopped: 3 steps in 2 s" in captured.out
    assert "[2/3] network.dim=4 skipped" in captured.out and "[3/3] network.dim=8 skipped" in captured.out
    assert sorted(os.listdir(out)) == ["demo_dim-2", "sweeps"]
    record, _ = _records(out)
    assert record.values == ("2", "4", "8") and record.run_dirs == (out / "demo_dim-2",)
    assert fake_engine == [[out / "demo_dim-2"]]
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_a_failed_run_does_not_stop_the_sweep_but_fails_the_command(tmp_path, capsys, fake_engine):
    _FakeTrainer.script = {"demo_dim-2": "failed"}
    out = tmp_path / "runs"
    assert main(["sweep", "demo", "--vary", "network.dim=2,4", *QUICK, "--output-dir", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "[1/2] network.dim=2 failed: out of memory" in printed and "[2/2] network.dim=4 completed" in printed
    assert "1 failed, 1 completed" in printed
    record, _ = _records(out)
    assert record.run_dirs == (out / "demo_dim-2", out / "demo_dim-4")


@pytest.mark.slow
def test_a_two_value_sweep_on_the_demo_trains_both_and_compares_them(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["sweep", "demo", "--vary", "dataset.resolution=128,192", *QUICK, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    record, record_path = _records(out)
    assert record.field == "dataset.resolution" and len(record.run_dirs) == 2
    assert [p.name.split("-", 2)[2] for p in record.run_dirs] == ["demo_resolution-128", "demo_resolution-192"]
    table = comparison_table([load_run(p) for p in record.run_dirs])
    column = table.columns.index
    assert len(table.rows) == 2
    assert [row[column("dataset.resolution")] for row in table.rows] == ["128x128", "192x192"]
    assert [row[column("steps")] for row in table.rows] == [3, 3]
    assert [row[column("status")] for row in table.rows] == ["completed", "completed"]
    assert [row[column("buckets")] for row in table.rows][0] == 1
    assert "| dataset.resolution |" in printed and "128x128" in printed and "192x192" in printed
    export = record_path.with_suffix("")
    assert (export / "comparison.csv").is_file() and (export / "loss_by_step.png").is_file()
    assert all((p / "demo_resolution-{}.safetensors".format(p.name.rsplit("-", 1)[1])).is_file()
               for p in record.run_dirs)


class _GpuRunTrainer(_FakeTrainer):
    """A finished run folder as a run on a GPU writes it: settings, measured peak, forecast."""

    def run(self):
        from core.config.presets import dumps_preset
        from core.training.run_folder import RunSummary
        from tests.test_run_index import forecast_of

        event = super().run()
        run_dir = event.run_dir
        with open(os.path.join(run_dir, "config.toml"), "w", encoding="utf-8") as handle:
            handle.write(dumps_preset(self.config, sparse=False))
        peak = 1000.0 * self.config.network.dim
        RunSummary(status="completed", name=self.config.output.output_name, steps=3, total_steps=3,
                   peak_vram_mb=peak, memory_kind="cuda", vram_forecast=forecast_of(peak / 1.25)).write(Path(run_dir))
        return event


def test_the_sweeps_comparison_shows_forecast_beside_measured_peak(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "Trainer", _GpuRunTrainer)
    _GpuRunTrainer.script = {}
    out = tmp_path / "runs"
    assert main(["sweep", "demo", "--vary", "network.dim=2,4", *QUICK, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| run |"))
    assert header.index("peak VRAM (MB)") < header.index("VRAM forecast (MB)") < header.index("measured / forecast")
    assert "| 2000 | 1600 | 1.25× |" in printed and "| 4000 | 3200 | 1.25× |" in printed
    _, record_path = _records(out)
    assert "measured / forecast" in (record_path.with_suffix("") / "comparison.csv").read_text()
