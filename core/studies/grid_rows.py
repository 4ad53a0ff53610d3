"""The rows of a comparison grid: where their LoRAs come from and how one is applied.

A row is a LoRA file (or None: the base model alone). Run folders give their final LoRA,
or every checkpoint in training order. For generating, a row's LoRA is attached to the
loaded base model with the rank and alpha each module has in the file (so files with
per-module ranks work too), its scale multiplied by the strength (0 computes exactly the
base model), and removed again afterwards, leaving the base model as it was.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config.schema import DEMO_MODEL, NetworkParams, NetworkType, TrainConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from core.models.family import Targets
    from core.models.components import ModelComponents
    from core.models.family import Family

DEMO_SOURCE = "demo model"  # what LoRAs trained on the demo model name as their base
_STEP_FILE = re.compile(r"-(?:step|s)(\d+)")  # name-step00000500 (and name-s00000500)
_EPOCH_FILE = re.compile(r"-e?(\d+)")  # name-000002 (and name-e000002)


class GridError(ValueError):
    """A grid that cannot be made as asked; the message names the file, row or setting."""


@dataclass
class GridRow:
    label: str
    lora_path: Path | None  # None: the base model without LoRA

    def __post_init__(self) -> None:
        if self.lora_path is not None:
            self.lora_path = Path(self.lora_path)


# ---------------------------------------------------------------- run folders


def run_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run folder was trained with (its config.toml)."""
    from core.config.presets import PresetError, load_preset
    from core.training.run_folder import CONFIG

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise GridError(f"{run_dir}: not a run folder (it has no {CONFIG}); give a run folder or a LoRA "
                        ".safetensors file")
    try:
        return load_preset(path).config
    except PresetError as err:
        raise GridError(str(err)) from None


def find_run_dir(lora_path: str | Path) -> Path | None:
    """The run folder a LoRA file was saved in (as final LoRA or checkpoint), if it is in one."""
    from core.training.run_folder import CONFIG

    path = Path(lora_path)
    return next((folder for folder in (path.parent, path.parent.parent) if (folder / CONFIG).is_file()), None)


def lora_metadata(path: Path) -> dict[str, str]:
    """A .safetensors file's metadata, read from its header only; {} when there is none."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - any unreadable file: reading it for a row reports why
        return {}


def _number(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def run_checkpoints(run_dir: Path, output_name: str) -> list[GridRow]:
    """The run's intermediate LoRAs in training order, labelled "step N" or "epoch N"."""
    from core.training.checkpoint import CHECKPOINT_DIR

    found: list[tuple[tuple[float, float, float], GridRow]] = []
    for path in (run_dir / CHECKPOINT_DIR).glob("*.safetensors"):
        suffix = path.stem[len(output_name):] if path.stem.startswith(output_name) else ""
        meta = lora_metadata(path)
        step, epoch = _number(meta.get("ss_steps")), _number(meta.get("ss_epoch"))
        if match := _STEP_FILE.fullmatch(suffix):
            label, step = f"step {int(match[1])}", step if step is not None else int(match[1])
        elif match := _EPOCH_FILE.fullmatch(suffix):
            label, epoch = f"epoch {int(match[1])}", int(match[1])
        else:
            label = path.stem
        order = (math.inf if step is None else step, math.inf if epoch is None else epoch, path.stat().st_mtime)
        found.append((order, GridRow(label, path)))
    return [row for _, row in sorted(found, key=lambda item: item[0])]


def _final_lora(run_dir: Path, output_name: str) -> Path | None:
    from core.training.run_folder import read_summary

    final = run_dir / f"{output_name}.safetensors"
    if final.is_file():
        return final
    recorded = (read_summary(run_dir) or {}).get("lora_path")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def rows_from_runs(run_dirs: list[Path], checkpoints: bool = False) -> list[GridRow]:
    """One row per run (its final LoRA, labelled by the run's name), or with ``checkpoints``
    one row per checkpoint of ONE run in training order, then its final LoRA ("final").

    A run that stopped before its final save shows its newest checkpoint, labelled so.
    Runs of the same name are labelled by their folder names instead.
    """
    from core.training.run_folder import read_summary

    dirs = [Path(d) for d in run_dirs]
    if checkpoints and len(dirs) != 1:
        raise GridError(f"checkpoint rows compare the checkpoints of one run; {len(dirs)} runs were given")
    outputs = [run_config(d).output.output_name for d in dirs]
    names = [(read_summary(d) or {}).get("name") or output for d, output in zip(dirs, outputs)]
    repeated = {name for name, count in Counter(names).items() if count > 1}
    rows: list[GridRow] = []
    for run_dir, output, name in zip(dirs, outputs, names):
        name = run_dir.name if name in repeated else name
        saved = run_checkpoints(run_dir, output)
        final = _final_lora(run_dir, output)
        if not saved and final is None:
            raise GridError(f"{run_dir}: the run has no LoRA file ({output}.safetensors nor checkpoints); it "
                            "may have failed or been cancelled before saving; choose another run")
        if checkpoints:
            rows += saved + ([GridRow("final", final)] if final else [])
        elif final is not None:
            rows.append(GridRow(name, final))
        else:
            rows.append(GridRow(f"{name} ({saved[-1].label})", saved[-1].lora_path))
    return rows


def base_model_from_metadata(lora_path: Path) -> str | None:
    """The base model a LoRA's metadata names (ss_sd_model_name), only if that is a file here
    (as named, or beside the LoRA): sd-scripts records just the file name, which may be
    another computer's file."""
    named = lora_metadata(lora_path).get("ss_sd_model_name", "").strip()
    if named in (DEMO_SOURCE, DEMO_MODEL):
        return DEMO_MODEL
    for candidate in ((Path(named).expanduser(), lora_path.parent / named) if named else ()):
        if candidate.exists():
            return str(candidate.resolve())
    return None


# ---------------------------------------------------------------- LoRA rows


def read_lora(row: GridRow, family: Family) -> dict[str, torch.Tensor]:
    """The row's LoRA tensors; GridError naming the row and file when it cannot be used."""
    from core.kohya.lora_format import KohyaFormatError, describe_lora, ensure_family, read_kohya_file

    path = row.lora_path
    assert path is not None
    where = f"row '{row.label}' ({path})"
    if not path.is_file():
        problem = "is a folder, not a LoRA file" if path.is_dir() else "the LoRA file does not exist"
        raise GridError(f"{where}: {problem}; choose another file or run")
    try:
        tensors, metadata = read_kohya_file(path)
        summary = describe_lora(tensors, metadata)
        ensure_family(summary, family, path.name)
    except KohyaFormatError as err:
        raise GridError(f"row '{row.label}': {err}") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise GridError(f"{where}: cannot read it as a LoRA file ({err})") from None
    if summary.n_modules == 0:
        raise GridError(f"{where}: not a Kohya-format LoRA (none of its tensors is a '.lora_down.weight')")
    if summary.network not in ("LoRA", "LoCon"):
        raise GridError(f"{where}: a LyCORIS {summary.network} file; grids apply LoRA and LoCon files only "
                        "(at a strength), so choose one of those or sample this run's own images")
    return tensors


def _file_targets(family: Family, components: ModelComponents, tensors: dict[str, torch.Tensor],
                  row: GridRow) -> dict[str, Targets]:
    """Component -> {module path: (rank, alpha)} for the modules the file holds.

    Every layer sd-scripts could give LoRA (LoCon's set: attention, feed-forward, resnet
    convolutions, text-encoder attention and MLP) is a candidate; a module name in the file
    that matches none means the file was made for another model.
    """
    from core.kohya.lora_format import ALPHA, DOWN
    from core.models.lora import effective_alpha

    every = NetworkParams(type=NetworkType.LOCON, dim=1, alpha=1.0, conv_dim=1, conv_alpha=1.0)
    models = components.denoisers()
    known = {family.kohya_name(component, path): (component, path)
             for component, model in models.items() for path in family.lora_targets(component, model, every)}
    targets: dict[str, Targets] = {component: {} for component in models}
    for key, down in tensors.items():
        name, _, rest = key.partition(".")
        if rest != DOWN:
            continue
        if name not in known:
            raise GridError(f"row '{row.label}': {name} in {row.lora_path} fits no layer of this base model; "
                            "was the LoRA made for another model?")
        component, path = known[name]
        rank = int(down.shape[0])
        alpha = tensors.get(f"{name}.{ALPHA}")
        # Kohya reads alpha 0 (or none) as alpha = rank; write it so load_kohya_into agrees.
        value = effective_alpha(float(alpha.float().item()) if alpha is not None else 0.0, rank)
        if alpha is not None and float(alpha.float().item()) != value:
            tensors[f"{name}.{ALPHA}"] = alpha.new_tensor(value)
        targets[component][path] = (rank, value)
    return targets


@contextmanager
def lora_applied(family: Family, components: ModelComponents, tensors: dict[str, torch.Tensor], strength: float,
                 row: GridRow) -> Iterator[None]:
    """The row's LoRA attached to the base model at ``strength``, and removed again on exit."""
    from core.models import lora
    from core.kohya.lora_format import KohyaFormatError, load_kohya_into

    models = components.denoisers()
    configs = {name: model.__dict__.get("peft_config") for name, model in models.items()}
    tensors = dict(tensors)  # _file_targets may rewrite alpha entries
    targets = _file_targets(family, components, tensors, row)
    try:
        for name, model in models.items():
            if targets[name]:
                # attach_lora takes one dim/alpha (and one conv dim/alpha) for all modules;
                # resized LoRAs have a rank per module, so inject the file's own targets.
                rank, alpha = Counter(targets[name].values()).most_common(1)[0][0]
                lora.inject_lora(model, targets[name], rank, alpha)
                lora.check_and_prepare(model, targets[name])
        # The network settings only word load_kohya_into's rank-mismatch error, which
        # cannot happen here: every target was made from the file.
        handles = lora.LoraHandles(models, {name: found for name, found in targets.items() if found},
                                   NetworkParams())
        try:
            report = load_kohya_into(handles, family, tensors)
        except KohyaFormatError as err:
            raise GridError(f"row '{row.label}': {err}") from None
        if report.unexpected:
            raise GridError(f"row '{row.label}': {row.lora_path} holds tensors that are not Kohya LoRA "
                            f"weights (e.g. {report.unexpected[0]}); LoRA Kiln cannot apply it")
        for _, _, layer in handles.layers():
            layer.scaling[handles.adapter] *= strength
        yield
    finally:
        for name, model in models.items():
            _remove_lora(model, targets[name], configs[name])


def _remove_lora(model: torch.nn.Module, targets: Targets, config: Any) -> None:
    """Put every original layer back where peft put its LoRA wrapper."""
    for path in targets:
        layer = model.get_submodule(path)
        base = getattr(layer, "base_layer", None)
        if base is None:
            continue  # never wrapped (attaching failed part-way)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, base)
    if config is None:
        model.__dict__.pop("peft_config", None)  # peft records its config here; a later attach adds its own
    else:
        model.__dict__["peft_config"] = config
