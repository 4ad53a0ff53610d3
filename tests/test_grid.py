"""Comparison grids: rows from runs and checkpoints, columns, layout, and the generated grid.

The grids use the built-in demo model (random weights: noise, but deterministic) at 64-128
px with 2 sampling steps, and LoRA files with random non-zero weights saved as training
saves them.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.sd1 import FAMILY as SD1
from core.config.schema import DEMO_MODEL, NetworkParams, NetworkType, SamplingParams, TrainConfig
from core.studies.grid import (PNG_KEY, GridCancelled, GridError, GridRow, GridSpec, check_spec, grid_columns, grid_layout,
                       grid_rows, make_grid, rows_from_runs, save_grid, spec_from_run)
from core.studies.grid_render import BACKGROUND, layout_grid, wrap_text
from core.kohya.lora_format import to_kohya_state_dict
from core.models.lora import attach_lora
from core.kohya.metadata import save_lora_file
from core.models.base_model import build_demo_model
from core.config.prompts import parse_prompts
from core.training.run_folder import RunSummary, write_config
from core.training.checkpoint import CHECKPOINT_DIR, checkpoint_name

LORA = NetworkParams(type=NetworkType.LORA, dim=4, alpha=2.0)
PROMPTS = "a kiln --w 64 --h 64 --s 2 --d 3\na vase, blue glaze --w 64 --h 64 --s 2 --d 4\n"


def write_lora(path: Path, seed: int = 0, *, network: NetworkParams = LORA, up_factor: float = 1.0,
               metadata: dict[str, str] | None = None) -> Path:
    """A LoRA for the demo model with random weights (as if trained), saved as training saves it."""
    components = build_demo_model(0)
    handles = attach_lora(components, SD1, network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in handles.params(("unet", "text_encoder")):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    tensors = to_kohya_state_dict(handles, SD1, torch.float16)
    for key in [k for k in tensors if k.endswith("lora_up.weight")]:
        tensors[key] = tensors[key] * up_factor  # exact: a power of two in the tests
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(path, tensors, {"ss_sd_model_name": "demo model", **(metadata or {})})
    return path


def placeholder_lora(path: Path, seed: int = 0, *, metadata: dict[str, str] | None = None) -> Path:
    """A valid one-module Kohya file, for tests that only find LoRA files and never apply them."""
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors = {f"{name}.lora_down.weight": torch.full((4, 32), float(seed)),
               f"{name}.lora_up.weight": torch.zeros(32, 4), f"{name}.alpha": torch.tensor(2.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(path, tensors, {"ss_sd_model_name": "demo model", **(metadata or {})})
    return path


def make_run(root: Path, name: str, *, folder: str | None = None, prompts: str = PROMPTS, final: bool = True,
             checkpoints: tuple[tuple[str, int, int], ...] = (), real_loras: bool = False) -> Path:
    """A run folder as training leaves it: config.toml, summary.json, LoRA files.

    ``checkpoints`` are (file name, ss_steps, ss_epoch) of the files under checkpoints/. The
    LoRA files are placeholders unless ``real_loras`` (random weights for the demo model).
    """
    write = write_lora if real_loras else placeholder_lora
    config = TrainConfig()
    config.model.base_model, config.model.clip_skip = DEMO_MODEL, 2
    config.sampling.prompts = prompts
    config.output.output_name = name
    run_dir = root / (folder or f"20260101-120000-{name}")
    run_dir.mkdir(parents=True)
    write_config(run_dir, config)
    RunSummary(status="completed", name=name).write(run_dir)
    for index, (file_name, step, epoch) in enumerate(checkpoints):
        write(run_dir / CHECKPOINT_DIR / file_name, index, metadata={"ss_steps": str(step), "ss_epoch": str(epoch)})
    if final:
        write(run_dir / f"{name}.safetensors", 99)
    return run_dir


def _spec(rows: list[GridRow], **changes) -> GridSpec:
    prompts = parse_prompts(PROMPTS, SamplingParams())
    return replace(GridSpec(rows=rows, prompts=prompts, base_model=DEMO_MODEL), **changes)


def _cell(image: Image.Image, spec: GridSpec, row: int, column: int) -> np.ndarray:
    """The generated image of one cell, cut out of the grid where its layout puts it."""
    layout = grid_layout(spec)
    prompt = grid_columns(spec)[column].prompt
    left, top = layout.image_origin(row, column, (prompt.width, prompt.height))
    return np.asarray(image.crop((left, top, left + prompt.width, top + prompt.height)))


def _inked(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many pixels in box (left, top, width, height) are not the background."""
    left, top, width, height = box
    region = np.asarray(image.crop((left, top, left + width, top + height)))
    return int((region != np.array(BACKGROUND, dtype=np.uint8)).any(axis=-1).sum())


# ---------------------------------------------------------------- layout and text


def test_layout_is_title_header_and_rows_by_columns_with_each_columns_widest_cell():
    sizes = [[(64, 64), (128, 64)], [(64, 96), (128, 64)]]
    layout = layout_grid(sizes, ["run a", "run b"], ["first", "second"], title="same for all")
    assert layout.column_width == (64, 128) and layout.row_height == (64, 96)
    assert layout.title_top < layout.header_top < layout.header_top + layout.header_height <= layout.row_top[0]
    assert layout.column_left[0] >= layout.label_left + layout.label_width
    assert layout.column_left[1] >= layout.column_left[0] + 64 and layout.row_top[1] >= layout.row_top[0] + 64
    # The canvas ends one margin after the last cell, on both axes.
    assert layout.width - (layout.column_left[1] + 128) == layout.label_left
    assert layout.height - (layout.row_top[1] + 96) == layout.title_top
    assert layout.image_origin(0, 0, (64, 64)) == (layout.column_left[0], layout.row_top[0])
    assert layout.image_origin(1, 0, (64, 64)) == (layout.column_left[0], layout.row_top[1] + 16)  # centred


def test_long_labels_wrap_to_the_column_and_are_cut_with_an_ellipsis():
    layout = layout_grid([[(64, 64)]], ["r"], ["word " * 40])
    lines = layout.header_lines[0]
    assert 1 < len(lines) <= 4 and lines[-1].endswith("...")
    font_width = layout_grid([[(64, 64)]], ["r"], ["w"]).column_width[0]
    assert font_width == 64  # a short label does not widen its column
    from core.studies.grid_render import _font, _text_width
    assert all(_text_width(line, _font(layout.font_size)) <= 64 for line in lines)
    assert wrap_text("a\nb", _font(12), 100, 4) == ("a", "b")


# ---------------------------------------------------------------- columns and checks


def test_prompt_columns_are_labelled_by_prompt_and_what_differs_between_them():
    columns = grid_columns(_spec([]))
    assert [c.label for c in columns] == ["a kiln\nseed 3", "a vase, blue glaze\nseed 4"]
    assert [c.prompt.seed for c in columns] == [3, 4]


def test_seed_and_size_columns_vary_the_first_prompt():
    seeds = grid_columns(_spec([], column_kind="seeds", seeds=[7, 8]))
    assert [(c.label, c.prompt.prompt, c.prompt.seed) for c in seeds] == [("seed 7", "a kiln", 7),
                                                                           ("seed 8", "a kiln", 8)]
    sizes = grid_columns(_spec([], column_kind="resolutions", resolutions=[(64, 128), (96, 64)]))
    assert [(c.label, c.prompt.width, c.prompt.height, c.prompt.seed) for c in sizes] == [
        ("64x128", 64, 128, 3), ("96x64", 96, 64, 3)]


@pytest.mark.parametrize(("changes", "message"), [
    ({"column_kind": "steps"}, "columns 'steps'"),
    ({"rows": []}, "no rows"),
    ({"prompts": []}, "no prompts"),
    ({"column_kind": "seeds"}, "at least one seed"),
    ({"column_kind": "seeds", "seeds": [-1]}, "seed -1"),
    ({"column_kind": "resolutions", "resolutions": [(100, 64)]}, "size 100x64"),
    ({"strength": float("nan")}, "strength nan"),
    ({"base_model": " "}, "no base model"),
    ({"max_token_length": 100}, "max token length 100 is not one of 75, 150, 225"),
])
def test_a_spec_that_cannot_make_a_grid_is_refused_naming_the_setting(changes, message):
    with pytest.raises(GridError, match=message):
        check_spec(replace(_spec([GridRow("x", Path("x.safetensors"))]), **changes))


# ---------------------------------------------------------------- rows from run folders


def test_runs_give_their_final_lora_labelled_by_name_and_same_names_by_folder(tmp_path):
    first = make_run(tmp_path, "style")
    second = make_run(tmp_path, "other")
    assert rows_from_runs([first, second]) == [GridRow("style", first / "style.safetensors"),
                                               GridRow("other", second / "other.safetensors")]
    again = make_run(tmp_path, "style", folder="20260102-080000-style")
    assert [r.label for r in rows_from_runs([first, again])] == [first.name, again.name]


def test_checkpoint_rows_are_in_training_order_then_final(tmp_path):
    # Written out of order; epoch files say their step only in their metadata.
    run = make_run(tmp_path, "kiln", checkpoints=(
        (checkpoint_name("kiln", epoch=2), 10, 2), (checkpoint_name("kiln", step=8), 8, 1),
        (checkpoint_name("kiln", step=12), 12, 2), (checkpoint_name("kiln", epoch=1), 5, 1)))
    rows = rows_from_runs([run], checkpoints=True)
    assert [r.label for r in rows] == ["epoch 1", "step 8", "epoch 2", "step 12", "final"]
    assert rows[1].lora_path == run / CHECKPOINT_DIR / "kiln-step00000008.safetensors"
    with pytest.raises(GridError, match="one run; 2 runs"):
        rows_from_runs([run, run], checkpoints=True)


def test_a_stopped_run_shows_its_newest_checkpoint_and_an_empty_run_is_an_error(tmp_path):
    stopped = make_run(tmp_path, "cut", final=False, checkpoints=((checkpoint_name("cut", step=4), 4, 1),
                                                                 (checkpoint_name("cut", step=6), 6, 1)))
    newest = stopped / CHECKPOINT_DIR / "cut-step00000006.safetensors"
    assert rows_from_runs([stopped]) == [GridRow("cut (step 6)", newest)]
    empty = make_run(tmp_path, "empty", final=False)
    with pytest.raises(GridError, match=f"{empty.name}: the run has no LoRA file"):
        rows_from_runs([empty])
    with pytest.raises(GridError, match="not a run folder"):
        rows_from_runs([tmp_path])


def test_spec_from_run_takes_the_model_settings_and_sample_prompts(tmp_path):
    run = make_run(tmp_path, "kiln")
    spec = spec_from_run(run)
    assert (spec.base_model, spec.clip_skip, spec.v_parameterization) == (DEMO_MODEL, 2, False)
    assert [p.prompt for p in spec.prompts] == ["a kiln", "a vase, blue glaze"]
    assert spec.rows == [GridRow("kiln", run / "kiln.safetensors")]


# ---------------------------------------------------------------- errors before generating


def test_a_missing_lora_file_is_named_before_the_model_loads(tmp_path):
    missing = tmp_path / "gone.safetensors"
    progress: list[tuple[int, int]] = []
    with pytest.raises(GridError, match=f"row 'gone' \\({missing}\\): the LoRA file does not exist"):
        make_grid(_spec([GridRow("gone", missing)]), progress=lambda d, t: progress.append((d, t)))
    assert progress == []


def test_an_sdxl_lora_is_refused_naming_the_row_and_file(tmp_path):
    path = tmp_path / "xl.safetensors"
    save_lora_file(path, {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
                          "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 4)}, {})
    with pytest.raises(GridError, match="row 'xl': xl.safetensors was made for SDXL"):
        make_grid(_spec([GridRow("xl", path)]))


def test_a_lycoris_file_is_refused_naming_its_type(tmp_path):
    path = tmp_path / "loha.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_lora_file(path, {f"{name}.hada_w1_a": torch.zeros(32, 4), f"{name}.hada_w1_b": torch.zeros(4, 32),
                          f"{name}.hada_w2_a": torch.zeros(32, 4), f"{name}.hada_w2_b": torch.zeros(4, 32)}, {})
    with pytest.raises(GridError, match="row 'loha' .*: a LyCORIS LoHa file; grids apply LoRA and LoCon files only"):
        make_grid(_spec([GridRow("loha", path)]))


# ---------------------------------------------------------------- generated grids


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    mixed = NetworkParams(type=NetworkType.LOCON, dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0)
    return {"a": write_lora(root / "a.safetensors", 1), "b": write_lora(root / "b.safetensors", 2),
            "doubled": write_lora(root / "doubled.safetensors", 1, up_factor=2.0),
            "locon": write_lora(root / "locon.safetensors", 3, network=mixed)}


@pytest.mark.slow
def test_a_grid_has_labels_and_each_cell_where_its_layout_says(loras):
    rows = [GridRow("lora a", loras["a"]), GridRow("locon", loras["locon"]), GridRow("again", None)]
    spec = _spec(rows, include_base_row=True)
    progress: list[tuple[int, int]] = []
    image = make_grid(spec, progress=lambda done, total: progress.append((done, total)))
    layout = grid_layout(spec)
    assert image.size == (layout.width, layout.height)
    assert progress == [(n, 8) for n in range(9)]
    header = (layout.column_left[0], layout.header_top, sum(layout.column_width), layout.header_height)
    labels = (layout.label_left, layout.row_top[0], layout.label_width, layout.row_top[-1] - layout.row_top[0])
    assert _inked(image, header) > 50 and _inked(image, labels) > 50
    base, lora, locon, again = ([_cell(image, spec, r, c) for c in range(2)] for r in range(4))
    assert all(cell.std() > 5 for cell in base + lora)  # images, not blank cells
    assert not np.array_equal(base[0], base[1])  # the prompts (and their seeds) differ
    assert not np.array_equal(base[0], lora[0]) and not np.array_equal(base[1], lora[1])
    assert not np.array_equal(base[0], locon[0])  # per-module ranks (dim 4, conv dim 2) apply too
    # Taking the LoRA off leaves the base model exactly as it was.
    assert np.array_equal(base[0], again[0]) and np.array_equal(base[1], again[1])


@pytest.mark.slow
def test_strength_zero_draws_the_base_model_and_strength_scales_the_lora(loras):
    zero = _spec([GridRow("a", loras["a"]), GridRow("locon", loras["locon"])], include_base_row=True, strength=0.0)
    image = make_grid(zero)
    for column in range(2):
        base = _cell(image, zero, 0, column)
        assert np.array_equal(base, _cell(image, zero, 1, column))
        assert np.array_equal(base, _cell(image, zero, 2, column))
    # Up weights x2 at strength 0.5 are the same LoRA as x1 at strength 1.
    full = _spec([GridRow("a", loras["a"])])
    half = _spec([GridRow("a", loras["doubled"])], strength=0.5)
    full_image, half_image = make_grid(full), make_grid(half)
    assert np.array_equal(_cell(full_image, full, 0, 0), _cell(half_image, half, 0, 0))
    assert not np.array_equal(_cell(full_image, full, 0, 0), _cell(image, zero, 0, 0))


@pytest.mark.slow
def test_seed_columns_repeat_for_the_same_seed_and_differ_for_another(loras):
    spec = _spec([GridRow("a", loras["a"]), GridRow("b", loras["b"])], column_kind="seeds", seeds=[5, 5, 6])
    image = make_grid(spec)
    for row in range(2):
        first, same, other = (_cell(image, spec, row, c) for c in range(3))
        assert np.array_equal(first, same) and not np.array_equal(first, other)
    assert not np.array_equal(_cell(image, spec, 0, 0), _cell(image, spec, 1, 0))  # two LoRAs, two images


@pytest.mark.slow
def test_size_columns_have_their_sizes_centred_on_the_background(loras):
    spec = _spec([GridRow("a", loras["a"])], column_kind="resolutions", resolutions=[(64, 64), (128, 64), (64, 128)])
    image = make_grid(spec)
    layout = grid_layout(spec)
    assert layout.column_width == (64, 128, 64) and layout.row_height == (128,)
    left, top, width, height = layout.cell_box(0, 0)
    assert _inked(image, (left, top, width, 32)) == 0 and _inked(image, (left, top + 96, width, 32)) == 0
    assert _inked(image, (left, top + 32, 64, 64)) > 64 * 60  # the 64x64 image, in the middle
    for column, size in ((1, (128, 64)), (2, (64, 128))):
        assert _cell(image, spec, 0, column).shape[:2] == (size[1], size[0])
        assert _inked(image, (*layout.image_origin(0, column, size), *size)) > size[0] * size[1] * 0.9


@pytest.mark.slow
def test_a_lora_for_other_layer_shapes_is_refused_and_cancelling_stops(loras, tmp_path):
    from core.kohya.lora_format import read_kohya_file

    tensors, _ = read_kohya_file(loras["a"])
    key = next(k for k in tensors if k.endswith("attn2_to_k.lora_down.weight"))
    tensors[key] = torch.zeros(4, 768)  # SD 1.5's context width: fine for SD 1.x, wrong for this model
    save_lora_file(tmp_path / "wide.safetensors", tensors, {})
    with pytest.raises(GridError, match=r"row 'wide': .*this model needs"):
        make_grid(_spec([GridRow("wide", tmp_path / "wide.safetensors")]))
    calls = []
    with pytest.raises(GridCancelled):
        make_grid(_spec([GridRow("a", loras["a"])]), progress=lambda d, t: calls.append(d),
                  cancelled=lambda: len(calls) > 1)
    assert calls == [0, 1]


def test_save_grid_writes_the_png_atomically_with_the_spec(tmp_path):
    spec = _spec([GridRow("a", tmp_path / "a.safetensors")], include_base_row=True, strength=0.75)
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    path = save_grid(image, tmp_path / "out" / "grid.png", spec)
    assert path == tmp_path / "out" / "grid.png" and os.listdir(path.parent) == ["grid.png"]
    with Image.open(path) as saved:
        assert saved.size == (40, 30)
        recorded = json.loads(saved.text[PNG_KEY])
    assert [r["label"] for r in recorded["rows"]] == ["base model", "a"]
    assert recorded["strength"] == 0.75 and recorded["columns"] == [c.label for c in grid_columns(spec)]
    assert recorded["prompts"][1]["prompt"] == "a vase, blue glaze" and recorded["prompts"][1]["seed"] == 4
    with pytest.raises(GridError, match="grid.jpg: the grid is saved as a PNG"):
        save_grid(image, tmp_path / "grid.jpg", spec)


def test_grid_rows_put_the_base_row_first():
    rows = grid_rows(_spec([GridRow("a", Path("a.safetensors"))], include_base_row=True))
    assert [(r.label, r.lora_path) for r in rows] == [("base model", None), ("a", Path("a.safetensors"))]
