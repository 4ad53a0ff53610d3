"""Labelled image grids that compare LoRAs, saved as one PNG.

Rows are runs (their final LoRA), the checkpoints of one run, or LoRA files, with the base
model alone as an optional reference row (core.studies.grid_rows finds and applies them); columns
are prompts, seeds (the first prompt with each seed) or sizes (the first prompt at each
width x height). Every cell is generated with its own seed, so a cell comes out the same
in every grid and the rows differ only by their LoRA.

The base model is loaded once and each row's LoRA is applied to it in turn. The layout
(core.studies.grid_render) is known before anything is generated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config.schema import DEMO_MODEL, MAX_TOKEN_LENGTHS
from core.studies.grid_render import GridLayout, draw_grid, layout_grid
from core.studies.grid_rows import (GridError, GridRow, base_model_from_metadata, find_run_dir, lora_applied,
                            read_lora, rows_from_runs, run_checkpoints, run_config)
from core.config.prompts import PromptError, SamplePrompt, parse_prompts

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL import Image

    from core.models.components import ModelComponents
    from core.models.family import Family

__all__ = ["COLUMN_KINDS", "GridCancelled", "GridColumn", "GridError", "GridRow", "GridSpec",
           "base_model_from_metadata", "check_spec", "find_run_dir", "grid_columns", "grid_layout", "grid_rows",
           "grid_title", "make_grid", "rows_from_runs", "run_checkpoints", "run_config", "save_grid",
           "spec_from_run", "spec_to_dict"]

COLUMN_KINDS = ("prompts", "seeds", "resolutions")
BASE_ROW_LABEL = "base model"
PNG_KEY = "lorakiln-grid"  # the PNG text chunk that holds the spec
MAX_SEED = 2**32 - 1


class GridCancelled(Exception):
    """The caller's ``cancelled()`` turned True; nothing was saved."""


@dataclass
class GridSpec:
    rows: list[GridRow]
    prompts: list[SamplePrompt]
    base_model: str
    column_kind: str = "prompts"
    seeds: list[int] = field(default_factory=list)
    resolutions: list[tuple[int, int]] = field(default_factory=list)
    strength: float = 1.0
    vae: str = ""
    clip_skip: int = 1
    max_token_length: int = 75  # prompt tokens that reach the text encoder, as the run trained
    v_parameterization: bool = False
    include_base_row: bool = False
    family: str = "auto"  # the model.family setting: "auto" takes it from the base model


@dataclass(frozen=True)
class GridColumn:
    label: str
    prompt: SamplePrompt  # with this column's seed / size already set


def spec_from_run(run_dir: str | Path, rows: list[GridRow] | None = None, *,
                  checkpoints: bool = False) -> GridSpec:
    """A spec with the run's base model, VAE, clip skip, v-prediction and sample prompts.

    ``rows`` default to the run's final LoRA (with ``checkpoints``: every checkpoint). The
    prompt list is empty when the run had no sample prompts: add some before make_grid.
    """
    config = run_config(run_dir)
    try:
        prompts = parse_prompts(config.sampling.prompts, config.sampling)
    except PromptError as err:
        raise GridError(f"{Path(run_dir).name}/config.toml: sampling.prompts: {err}") from None
    return GridSpec(rows=rows if rows is not None else rows_from_runs([Path(run_dir)], checkpoints),
                    prompts=prompts, base_model=config.model.base_model, vae=config.model.vae,
                    clip_skip=config.model.clip_skip, max_token_length=config.training.max_token_length,
                    v_parameterization=config.model.v_parameterization, family=str(config.model.family))


def check_spec(spec: GridSpec) -> None:
    """Raise GridError, naming the setting, for a spec that cannot make a grid."""
    if spec.column_kind not in COLUMN_KINDS:
        raise GridError(f"columns '{spec.column_kind}' is not one of {', '.join(COLUMN_KINDS)}")
    if not spec.rows and not spec.include_base_row:
        raise GridError("the grid has no rows: choose at least one run or LoRA file, or the base model row")
    if not spec.prompts:
        raise GridError("the grid has no prompts (the run has no sample prompts): give at least one prompt")
    if spec.column_kind == "seeds":
        if not spec.seeds:
            raise GridError("seed columns need at least one seed")
        if bad := [s for s in spec.seeds if not 0 <= s <= MAX_SEED]:
            raise GridError(f"seed {bad[0]} is outside 0..{MAX_SEED}")
    if spec.column_kind == "resolutions" and not spec.resolutions:
        raise GridError("size columns need at least one width x height")
    for width, height in spec.resolutions if spec.column_kind == "resolutions" else ():
        if not (64 <= width <= 4096 and 64 <= height <= 4096) or width % 8 or height % 8:
            raise GridError(f"size {width}x{height}: width and height must be multiples of 8 from 64 to 4096")
    if not math.isfinite(spec.strength):
        raise GridError(f"strength {spec.strength} is not a number; use e.g. 1.0 (0 turns the LoRA off)")
    if not 1 <= spec.clip_skip <= 12:
        raise GridError(f"clip skip {spec.clip_skip} is outside 1..12")
    if spec.max_token_length not in MAX_TOKEN_LENGTHS:
        raise GridError(f"max token length {spec.max_token_length} is not one of "
                        + ", ".join(str(n) for n in MAX_TOKEN_LENGTHS))
    if not spec.base_model.strip():
        raise GridError("no base model: choose the checkpoint to generate with")


def grid_rows(spec: GridSpec) -> list[GridRow]:
    return ([GridRow(BASE_ROW_LABEL, None)] if spec.include_base_row else []) + list(spec.rows)


_SETTINGS = ("negative", "seed", "size", "steps", "cfg", "sampler")


def _setting(prompt: SamplePrompt, name: str) -> str:
    return {"negative": f"negative: {prompt.negative or '-'}", "seed": f"seed {prompt.seed}",
            "size": f"{prompt.width}x{prompt.height}", "steps": f"{prompt.steps} steps",
            "cfg": f"CFG {prompt.cfg_scale:g}", "sampler": prompt.sampler.value}[name]


def _varying(prompts: list[SamplePrompt]) -> list[str]:
    return [name for name in _SETTINGS if len({_setting(p, name) for p in prompts}) > 1]


def grid_columns(spec: GridSpec) -> list[GridColumn]:
    """One column per prompt, per seed of the first prompt, or per size of the first prompt.

    A prompt column's label is its prompt, plus the settings in which the prompts differ.
    """
    first = spec.prompts[0]
    if spec.column_kind == "seeds":
        return [GridColumn(f"seed {seed}", replace(first, seed=seed)) for seed in spec.seeds]
    if spec.column_kind == "resolutions":
        return [GridColumn(f"{w}x{h}", replace(first, width=w, height=h)) for w, h in spec.resolutions]
    varying = _varying(spec.prompts)

    def label(prompt: SamplePrompt) -> str:
        differences = ", ".join(_setting(prompt, name) for name in varying)
        return f"{prompt.prompt}\n{differences}" if differences else prompt.prompt

    return [GridColumn(label(p), p) for p in spec.prompts]


def grid_title(spec: GridSpec) -> str:
    """What every cell shares: the prompt (unless columns are prompts), settings, strength, model."""
    prompts = [c.prompt for c in grid_columns(spec)]
    varying = set(_varying(prompts))
    parts = [] if spec.column_kind == "prompts" else [f'"{prompts[0].prompt}"']
    parts += [_setting(prompts[0], name) for name in _SETTINGS
              if name not in varying and (name != "negative" or prompts[0].negative)]
    model = "demo model" if spec.base_model == DEMO_MODEL else Path(spec.base_model).name
    return ", ".join(parts + [f"strength {spec.strength:g}", f"base model: {model}"])


def grid_layout(spec: GridSpec) -> GridLayout:
    """Where every label and cell of the grid goes (and its size), before generating anything."""
    check_spec(spec)
    columns, rows = grid_columns(spec), grid_rows(spec)
    sizes = [(c.prompt.width, c.prompt.height) for c in columns]
    return layout_grid([sizes] * len(rows), [r.label for r in rows], [c.label for c in columns], grid_title(spec))


# ---------------------------------------------------------------- generating and saving


def make_grid(spec: GridSpec, progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> Image.Image:
    """Generate every cell and draw the labelled grid.

    ``progress(done, total)`` is called with 0 before the model loads and after each cell;
    ``cancelled()`` is polled between cells and raises GridCancelled when True. Problems
    with the spec or a row's LoRA file raise GridError before the model is loaded.
    """
    import torch

    from core.models.base_model import ModelLoadCancelled, ModelLoadError, load_base_model
    from core.models.family import UnsupportedFamily, family_for

    layout = grid_layout(spec)
    rows, columns = grid_rows(spec), grid_columns(spec)
    try:
        family = family_for(spec.base_model, spec.family)
    except UnsupportedFamily as err:
        raise GridError(f"base model: {err}") from None
    for row in rows:  # read every file now (and again per row, to keep one in memory at a time)
        if row.lora_path is not None:
            read_lora(row, family)
    total, done = len(rows) * len(columns), 0
    _report(progress, 0, total)
    _stop_if(cancelled)
    try:
        components = load_base_model(spec.base_model, family=family.name, vae=spec.vae,
                                     v_parameterization=spec.v_parameterization, cancelled=cancelled)
    except ModelLoadCancelled:
        raise GridCancelled() from None
    except ModelLoadError as err:
        raise GridError(f"base model: {err}") from None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # CPU kernels want fp32
    for module in (*components.denoisers().values(), components.vae):
        module.to(device, dtype)
    cells: list[list[Image.Image]] = []
    for row in rows:
        with _row_weights(family, components, row, spec.strength):
            cells.append([])
            for column in columns:
                _stop_if(cancelled)
                try:
                    cells[-1].append(family.generate(components, column.prompt, clip_skip=spec.clip_skip,
                                                     device=device, dtype=dtype,
                                                     max_token_length=spec.max_token_length))
                except Exception as err:  # out of memory and the like: say which cell
                    raise GridError(f"row '{row.label}', column '{column.label.splitlines()[0]}': "
                                    f"generating the image failed: {err}") from err
                done += 1
                _report(progress, done, total)
    return draw_grid(cells, layout)


@contextmanager
def _row_weights(family: Family, components: ModelComponents, row: GridRow, strength: float) -> Iterator[None]:
    if row.lora_path is None:
        yield
    else:
        with lora_applied(family, components, read_lora(row, family), strength, row):
            yield


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _stop_if(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise GridCancelled()


def spec_to_dict(spec: GridSpec) -> dict[str, Any]:
    """The spec as plain JSON values: what the saved PNG records about how it was made."""
    return {
        "rows": [{"label": r.label, "lora": str(r.lora_path) if r.lora_path else None} for r in grid_rows(spec)],
        "column_kind": spec.column_kind, "columns": [c.label for c in grid_columns(spec)],
        "prompts": [{"prompt": p.prompt, "negative": p.negative, "width": p.width, "height": p.height,
                     "steps": p.steps, "cfg_scale": p.cfg_scale, "seed": p.seed, "sampler": p.sampler.value}
                    for p in spec.prompts],
        "seeds": list(spec.seeds), "resolutions": [list(r) for r in spec.resolutions],
        "strength": spec.strength, "base_model": spec.base_model, "vae": spec.vae,
        "clip_skip": spec.clip_skip, "max_token_length": spec.max_token_length,
        "v_parameterization": spec.v_parameterization,
    }


def save_grid(image: Image.Image, path: str | Path, spec: GridSpec) -> Path:
    """Write the grid as a PNG (atomically) with the spec as JSON in its 'lorakiln-grid' text chunk."""
    import io

    from PIL.PngImagePlugin import PngInfo

    from core.system.atomic import write_bytes_atomic

    target = Path(path).expanduser()
    if target.suffix.lower() != ".png":
        raise GridError(f"{target.name}: the grid is saved as a PNG; give the file name a .png ending")
    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(spec_to_dict(spec), ensure_ascii=False))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, buffer.getvalue())
    except OSError as err:
        raise GridError(f"{target}: cannot write the grid ({err.strerror or err}); choose another place") from None
    return target
