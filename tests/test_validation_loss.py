"""The validation loss: held-out images chosen by seed, never trained, and a loss at fixed
timesteps and noise that is the same for the same weights, step to step and run to run."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from core.config.schema import SubsetParams, TrainConfig
from core.data.plan import plan_dataset
from core.data.validation_split import held_out_count
from core.training.engine import Trainer
from core.training.events import ListSink, StepMetrics, ValidationMetrics
from core.training.run_folder import read_metrics
from core.training.validation import ERROR, WARNING, validate
from core.training.validation_loss import ValidationLoss, fixed_timesteps
from tests.engine_fixtures import tiny_config


def _folder(path: Path, count: int, colour: int = 0) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (64, 64), (colour, 20 * i, 100)).save(path / f"img{i:02d}.png")
        (path / f"img{i:02d}.txt").write_text(f"picture {i}")
    return path


def _dataset(tmp_path: Path, split: float, seed: int = -1) -> TrainConfig:
    config = TrainConfig()
    config.dataset.subsets = [SubsetParams(image_dir=str(_folder(tmp_path / "a", 10))),
                              SubsetParams(image_dir=str(_folder(tmp_path / "b", 5, 90)), num_repeats=3),
                              SubsetParams(image_dir=str(_folder(tmp_path / "reg", 4, 200)), is_reg=True)]
    config.dataset.resolution = (64, 64)
    config.dataset.min_bucket_reso = 64
    config.dataset.validation_split, config.dataset.validation_seed = split, seed
    return config


def _held(plan) -> list[str]:
    return [Path(i.record.path).parent.name + "/" + Path(i.record.path).name for i in plan.validation]


def test_each_training_folder_is_split_on_its_own_and_regularisation_never(tmp_path):
    config = _dataset(tmp_path, 0.2, seed=1)
    plan = plan_dataset(config.dataset, config.training)
    held = _held(plan)
    assert sorted(name.split("/")[0] for name in held) == ["a", "a", "b"]  # ceil keeps 8 of 10, 4 of 5
    trained = {str(i.record.path) for i in plan.images}
    assert not trained & {str(i.record.path) for i in plan.validation}
    assert len(plan.images) == 10 + 5 + 4 - 3


def test_the_split_depends_on_the_validation_seed_only(tmp_path):
    first = _held(plan_dataset(_dataset(tmp_path / "1", 0.3, seed=5).dataset, TrainConfig().training))
    again = _held(plan_dataset(_dataset(tmp_path / "2", 0.3, seed=5).dataset, TrainConfig().training))
    other = _held(plan_dataset(_dataset(tmp_path / "3", 0.3, seed=6).dataset, TrainConfig().training))
    assert first == again and first != other


def test_without_a_validation_seed_the_training_seed_chooses(tmp_path):
    config = _dataset(tmp_path, 0.3)
    config.training.seed = 5
    by_training_seed = _held(plan_dataset(config.dataset, config.training))
    explicit = _dataset(tmp_path / "x", 0.3, seed=5)
    assert by_training_seed == _held(plan_dataset(explicit.dataset, explicit.training))


def test_the_plan_counts_steps_without_the_held_out_images_and_says_so(tmp_path):
    config = _dataset(tmp_path, 0.2, seed=1)
    config.training.batch_size = 1
    split = plan_dataset(config.dataset, config.training)
    config.dataset.validation_split = 0.0
    whole = plan_dataset(config.dataset, config.training)
    # 2 of folder a (1 repeat) and 1 of folder b (3 repeats) are not trained: 5 batches fewer;
    # the regularisation images are matched to the smaller training set (Kohya's top-up).
    assert whole.num_train_images - split.num_train_images == 2 + 3
    assert split.batches_per_epoch < whole.batches_per_epoch
    assert split.notes[0].startswith("3 images held out for validation")
    assert not whole.validation


def test_a_split_never_empties_a_folder():
    assert [held_out_count(n, 0.9) for n in (1, 2, 10)] == [0, 1, 9]
    assert held_out_count(3, 0.0) == 0


def test_a_split_that_holds_nothing_out_of_small_folders_is_warned_about_by_check_and_the_plan(tmp_path):
    config = _dataset(tmp_path, 0.05)  # folders of 10 and 5 images: 0.05 rounds to none of either
    plan = plan_dataset(config.dataset, config.training)
    assert not plan.validation
    expected = ("validation_split 0.05 holds out 0 images: it rounds down in each training folder, so there "
                "is no validation loss; set a split of at least 0.1 (the largest training folder has 10 "
                "images), or a validation folder (dataset.validation_dir)")
    assert expected in plan.warnings
    problems = [p for p in validate(config) if p.path == "dataset.validation_split"]
    assert [(p.severity, p.message) for p in problems] == [(WARNING, expected)]
    config.dataset.validation_split = 0.1  # one image of folder a
    assert not [p for p in validate(config) if p.path == "dataset.validation_split"]
    assert not any("holds out 0" in w for w in plan_dataset(config.dataset, config.training).warnings)


def test_a_validation_folder_is_used_instead_of_a_split_and_never_trained(tmp_path):
    config = _dataset(tmp_path, 0.0)
    config.dataset.validation_dir = str(_folder(tmp_path / "val", 3, 250))
    plan = plan_dataset(config.dataset, config.training)
    assert [Path(i.record.path).parent.name for i in plan.validation] == ["val"] * 3
    assert "val" not in {Path(i.record.path).parent.name for i in plan.images}
    assert plan.validation[0].record.caption == "picture 0"


def test_a_missing_validation_folder_is_named(tmp_path):
    config = tiny_config(tmp_path)
    config.dataset.validation_dir = str(tmp_path / "nowhere")
    problems = [p for p in validate(config) if p.severity == ERROR]
    assert [p.path for p in problems] == ["dataset.validation_dir"]
    assert "does not exist" in problems[0].message


def test_validation_settings_without_a_validation_set_are_warned_about(tmp_path):
    config = tiny_config(tmp_path)
    config.training.validate_every_n_steps = 10
    assert "training.validate_every_n_steps" in {p.path for p in validate(config)}
    config.dataset.validation_split = 0.2
    config.training.validate_every_n_steps = config.training.validate_every_n_epochs = 0
    assert "training.validate_every_n_epochs" in {p.path for p in validate(config)}


def test_the_fixed_timesteps_spread_over_the_schedule():
    assert fixed_timesteps(1000) == [200, 400, 600, 800]  # as sd-scripts' validation
    assert fixed_timesteps(1000, 1) == [500]


# ---------------------------------------------------------------- the engine

def _run(config: TrainConfig):
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert result.reason == "completed", getattr(result, "traceback", "")
    return result, sink


def _with_validation_folder(root: Path, steps: int = 6) -> TrainConfig:
    config = tiny_config(root, steps)
    config.dataset.validation_dir = str(_folder(root / "val", 3, 250))
    config.training.validate_every_n_steps, config.training.validate_every_n_epochs = 2, 0
    return config


def test_validation_leaves_the_training_losses_unchanged(tmp_path):
    plain = [e.loss for e in _run(tiny_config(tmp_path / "plain"))[1].of(StepMetrics)]
    _, sink = _run(_with_validation_folder(tmp_path / "validated"))
    assert [e.step for e in sink.of(ValidationMetrics)] == [2, 4, 6]
    assert [e.loss for e in sink.of(StepMetrics)] == plain


def test_the_validation_loss_is_the_same_for_the_same_weights_and_in_another_run(tmp_path, monkeypatch):
    evaluate, pairs = ValidationLoss.evaluate, []

    def twice(self, models):
        pairs.append((evaluate(self, models), evaluate(self, models)))
        return pairs[-1][0]

    monkeypatch.setattr(ValidationLoss, "evaluate", twice)
    first = [e.loss for e in _run(_with_validation_folder(tmp_path / "a"))[1].of(ValidationMetrics)]
    assert len(pairs) == 3 and all(a == b and math.isfinite(a) for a, b in pairs)
    monkeypatch.undo()
    second = [e.loss for e in _run(_with_validation_folder(tmp_path / "b"))[1].of(ValidationMetrics)]
    assert first == second and len(set(first)) == 3


def test_the_validation_loss_reaches_metrics_tensorboard_and_the_summary(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = _with_validation_folder(tmp_path)
    config.training.validate_every_n_steps, config.training.validate_every_n_epochs = 4, 1
    config.logging.tensorboard = True
    result, sink = _run(config)
    events = sink.of(ValidationMetrics)
    assert [(e.step, e.when) for e in events] == [(4, "step"), (5, "epoch"), (6, "epoch")]
    assert all(e.images == 3 for e in events)
    assert events[-1].best == min(e.loss for e in events)
    run = Path(result.run_dir)
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "validation"]
    assert [(r["step"], r["loss"]) for r in records] == [(e.step, e.loss) for e in events]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["validation_loss"] == events[-1].loss
    best = min(events, key=lambda e: e.loss)
    assert (summary["best_validation_loss"], summary["best_validation_step"]) == (best.loss, best.step)
    scalars = accumulator.EventAccumulator(str(run / "tensorboard"))
    scalars.Reload()
    assert [s.step for s in scalars.Scalars("loss/validation/step_average")] == [4]
    assert [s.step for s in scalars.Scalars("loss/validation/epoch_average")] == [5, 6]


def test_a_resumed_run_keeps_the_best_validation_loss_of_the_sessions_before_it(tmp_path, monkeypatch):
    from core.config.presets import load_preset

    losses = iter([0.1, 0.5, 0.3])  # steps 2 and 4 in the first session, step 6 after the resume
    monkeypatch.setattr(ValidationLoss, "evaluate", lambda self, models: next(losses))
    config = _with_validation_folder(tmp_path, steps=4)
    config.output.save_state = True
    first, _ = _run(config)
    run = Path(first.run_dir)
    resumed_config = load_preset(run / "config.toml").config
    resumed_config.training.max_train_steps = 6
    sink = ListSink()
    result = Trainer(resumed_config, sink, resume_from=run).run()
    assert result.reason == "completed", getattr(result, "traceback", "")
    assert [(e.step, e.loss, e.best) for e in sink.of(ValidationMetrics)] == [(6, 0.3, 0.1)]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["validation_loss"], summary["best_validation_loss"], summary["best_validation_step"]) == \
        (0.3, 0.1, 2)


# ---------------------------------------------------------------- import and export

KOHYA = Path(__file__).parent / "data" / "kohya"


def test_kohya_ss_validation_keys_are_mapped(tmp_path):
    from core.kohya.import_config import import_kohya

    data = json.loads((KOHYA / "kohya_ss_lora.json").read_text("utf-8"))
    data.update(validation_split=0.1, validation_seed=3, validate_every_n_steps=50, validate_every_n_epochs=2,
                max_validation_steps=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), "utf-8")
    result = import_kohya([path])
    dataset, training = result.config.dataset, result.config.training
    assert (dataset.validation_split, dataset.validation_seed) == (0.1, 3)
    assert (training.validate_every_n_steps, training.validate_every_n_epochs, training.max_validation_steps) == \
        (50, 2, 4)
    assert not [u for u in result.unsupported if "valid" in u.key]


def test_a_dataset_config_validation_split_is_mapped(tmp_path):
    from core.kohya.import_config import import_kohya

    path = tmp_path / "dataset.toml"
    folder = _folder(tmp_path / "imgs", 2)
    path.write_text(f'[general]\nvalidation_split = 0.25\nvalidation_seed = 9\n\n[[datasets]]\nresolution = 512\n'
                    f'[[datasets.subsets]]\nimage_dir = "{folder.as_posix()}"\n', "utf-8")
    result = import_kohya([path])
    assert (result.config.dataset.validation_split, result.config.dataset.validation_seed) == (0.25, 9)
    assert not [u for u in result.unsupported if "valid" in u.key]


def test_export_writes_the_validation_keys(tmp_path):
    import tomllib

    from core.kohya.export import build_export

    config = _dataset(tmp_path, 0.2, seed=4)
    config.model.base_model = str(tmp_path / "model.safetensors")
    config.training.validate_every_n_steps = 100
    config.dataset.validation_dir = str(tmp_path / "a")
    exported = build_export(config)
    arguments = {k: v for section in tomllib.loads(exported.config_toml).values() for k, v in section.items()}
    dataset = tomllib.loads(exported.dataset_toml)["datasets"][0]
    assert (dataset["validation_split"], dataset["validation_seed"]) == (0.2, 4)
    assert arguments["validate_every_n_steps"] == 100 and "max_validation_steps" not in arguments
    assert any(note.startswith("dataset.validation_dir") for note in exported.notes)


def test_check_shows_the_held_out_count(capsys):
    from core.cli.main import main

    assert main(["check", "demo", "--set", "dataset.validation_split=0.5"]) == 0
    out = capsys.readouterr().out
    assert "images held out for validation" in out and out.strip().endswith("OK")


# ---------------------------------------------------------------- the training tab

def test_the_loss_plot_draws_the_validation_loss_beside_the_training_loss(qtbot):
    from gui.training_plots import VALIDATION, TrainingPlots

    plots = TrainingPlots()
    qtbot.addWidget(plots.loss)
    for n in range(1, 7):
        plots.add_step(StepMetrics(n, 1, 6, 1.0 / n, 0.5, {"unet": 1e-4}))
    assert not plots.loss.has_series(VALIDATION)  # no legend entry for a run without a validation set
    for n, loss in ((2, 0.9), (4, 0.8), (6, 0.85)):
        plots.add_validation(ValidationMetrics(n, 1, loss, min(loss, 0.8), 3, "step"))
    plots.redraw_now()
    x, y = plots.loss._series[VALIDATION][1].getData()
    assert x.tolist() == [2, 4, 6] and y.tolist() == [0.9, 0.8, 0.85]
    curve = plots.loss._series[VALIDATION][1]
    assert curve.opts["symbol"] == "o" and curve.opts["name"] == "validation"
    assert "validation" in plots.loss.plot_item.titleLabel.text
    plots.clear()
    assert not plots.loss.has_series(VALIDATION)


def test_the_training_tab_routes_validation_events_to_the_plot_and_log(qtbot):
    from tests.gui_fixtures import quiet_training_tab

    tabs = quiet_training_tab(qtbot, 10_000)
    tab = next(tabs)
    tab._on_worker_event(ValidationMetrics(5, 1, 0.4321, 0.4321, 3, "epoch"))
    x, y = tab.plots.loss.series("validation").view()
    assert (x.tolist(), y.tolist()) == ([5.0], [0.4321])
    assert "validation loss at step 5: 0.4321" in tab.log.toPlainText()
    tabs.close()


# ---------------------------------------------------------------- comparing runs

def _run_with_validation(root: Path, folder: str, resolution: int, losses: list[float] | None) -> Path:
    from tests.test_run_index import make_config, step_record, write_run

    metrics = [step_record(s, 1.0 / s) for s in range(1, 5)]
    if losses is not None:
        metrics += [{"type": "validation", "step": s, "epoch": 1, "loss": v, "best": min(losses[:i + 1]),
                     "images": 3, "when": "step"} for i, (s, v) in enumerate(zip((2, 4), losses))]
    run = write_run(root, folder, make_config(folder, resolution), metrics=metrics)
    if losses is not None:
        summary = json.loads((run / "summary.json").read_text())
        summary.update(validation_loss=losses[-1], best_validation_loss=min(losses), best_validation_step=2)
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_the_comparison_table_shows_final_and_best_validation_loss(tmp_path):
    from core.studies.compare import comparison_table, format_cell
    from core.studies.run_index import load_run

    records = [load_run(_run_with_validation(tmp_path, "a", 512, [0.5, 0.6])),
               load_run(_run_with_validation(tmp_path, "b", 768, None))]  # an older run, or none held out
    table = comparison_table(records)
    assert table.columns[-2:] == ["final validation loss", "best validation loss"]
    assert table.rows[0][-2:] == [0.6, 0.5] and table.rows[1][-2:] == [None, None]
    assert format_cell("best validation loss", 0.5) == "0.5000"
    plain = comparison_table(records[1:])
    assert "final validation loss" not in plain.columns


def test_the_compare_view_plots_each_runs_validation_loss_and_can_hide_it(qtbot, tmp_path):
    from core.studies.run_index import load_run
    from gui.compare_view import CompareView

    records = [load_run(_run_with_validation(tmp_path, "a", 512, [0.5, 0.6])),
               load_run(_run_with_validation(tmp_path, "b", 768, [0.7, 0.4]))]
    view = CompareView()
    qtbot.addWidget(view)
    with qtbot.waitSignal(view.drawn, timeout=20_000):
        view.show_runs(records)
    names = [n for n in view.loss.series_names() if n.endswith("(validation)")]
    assert len(names) == 2 and not view.validation_box.isHidden()  # offered: these runs have one
    xs, ys = view.loss.series(names[1]).view()
    assert xs.tolist() == [2, 4] and ys.tolist() == [0.7, 0.4]
    with qtbot.waitSignal(view.drawn, timeout=20_000, raising=False):
        view.validation_box.setChecked(False)
    assert not [n for n in view.loss.series_names() if n.endswith("(validation)")]


def test_the_exported_comparison_charts_the_validation_loss(tmp_path):
    from core.studies.compare import export_comparison
    from core.studies.run_index import load_run

    records = [load_run(_run_with_validation(tmp_path / "runs", "a", 512, [0.5, 0.6]))]
    written = export_comparison(records, tmp_path / "out")
    assert "validation_loss_by_step.png" in {p.name for p in written}


def test_a_lora_easy_config_maps_its_validation_keys(tmp_path):
    from core.kohya.import_config import import_kohya
    from tests.test_import_fidelity import EASY_TOML

    text = EASY_TOML.replace("max_train_epochs = 2", "max_train_epochs = 2\nvalidate_every_n_steps = 25").replace(
        "batch_size = 2", "batch_size = 2\nvalidation_split = 0.15\nvalidation_seed = 11")
    path = tmp_path / "easy.toml"
    path.write_text(text, "utf-8")
    result = import_kohya([path])
    assert (result.config.dataset.validation_split, result.config.dataset.validation_seed) == (0.15, 11)
    assert result.config.training.validate_every_n_steps == 25
    assert not [u for u in result.unsupported if "valid" in u.key]
