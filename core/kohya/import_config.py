"""Import a kohya_ss GUI JSON, an sd-scripts config TOML and/or dataset config into a TrainConfig.

Every key of the files ends in exactly one list: mapped (with the field it set),
unsupported (with the reason), or ignored (empty, off, or overridden, with the reason).
Keys map one-to-one through the schema's ``kohya=`` names; the few that need more than
that are handled in core.kohya.import_special and core.kohya.import_misc, the dataset
options in core.kohya.import_dataset, and what the schema cannot say (other tools'
spellings, reasons for unsupported keys) is in core.kohya.import_keys.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from core.kohya import import_keys as keys
from core.kohya.import_common import (CONFIG, DATASET, KOHYA_SS, ImportContext, ImportResult, KohyaImportError,
                                      flatten_config, read_source)
from core.kohya.import_easy import EASY, read_easy_config
from core.kohya.import_family import refusal
from core.kohya.import_dataset import assemble_dataset, linked_dataset_config
from core.kohya.import_special import map_arguments

__all__ = ["ImportResult", "KohyaImportError", "import_kohya"]


def import_kohya(paths: Sequence[Path | str]) -> ImportResult:
    """Import one Kohya config, or a config and a dataset config together (any order)."""
    files = [Path(p) for p in paths]
    if not 1 <= len(files) <= 2:
        raise KohyaImportError(", ".join(map(str, files)) or "import",
                               "give one config file, or a config and a dataset config")
    read_notes: list[str] = []
    sources = [(file, *read_source(file, notes=read_notes)) for file in files]
    mains = [s for s in sources if s[1] != DATASET]
    datasets = [s for s in sources if s[1] == DATASET]
    if len(mains) > 1:
        raise KohyaImportError(files[1], "two training configs given; the second file must be a "
                                         "dataset config (one with [[datasets]])")
    if len(datasets) > 1:
        raise KohyaImportError(files[1], "two dataset configs given; give a config and a dataset config")
    notes: list[str] = []
    easy = None
    if mains:
        main_path, kind, data = mains[0]
        if kind == EASY:
            easy = read_easy_config(data)
            if easy.train_mode.strip().lower() != "lora":
                raise KohyaImportError(main_path, f"train_mode is {easy.train_mode!r}: LoRA Kiln trains LoRAs "
                                                  "only (train_mode = \"lora\")")
            args, notes = easy.args, easy.warnings
            if not datasets:  # its [[subsets]] and dataset_args are the dataset config
                datasets = [(main_path, DATASET, easy.dataset)]
        else:
            args = flatten_config(data, str(main_path), notes) if kind == CONFIG else data
        problem = refusal(args, from_kohya_ss=kind == KOHYA_SS)
        if problem:
            raise KohyaImportError(main_path, problem)
        ctx = ImportContext(CONFIG if kind == EASY else kind, args, main_path.resolve().parent, str(main_path))
        if easy is not None:
            ctx.shown.update({name: key for name, key in easy.shown.items() if name in ctx.shown})
            ctx.doc_keys = easy.doc_keys
            for key, value, why in easy.ignored:
                ctx.ignored(key, value, why)
            for name, value in easy.implied.items():  # not in the file, so not in the report
                ctx.args[name], ctx.shown[name] = value, name
                ctx.defaulted.add(name)
    else:
        ctx = ImportContext(None, {}, datasets[0][0].resolve().parent, str(datasets[0][0]))
    ctx.result.warnings += read_notes + notes
    ctx.result.sources = [(str(path), kind) for path, kind, _ in sources]
    if ctx.kind == CONFIG:
        _fill_sd_scripts_defaults(ctx)
    dataset = (datasets[0][0], datasets[0][2]) if datasets else None
    dataset = linked_dataset_config(ctx, dataset)
    map_arguments(ctx)
    assemble_dataset(ctx, dataset[1] if dataset else None, dataset[0] if dataset else None)
    for name in list(ctx.args):  # the safety net: every key lands in one of the lists
        if ctx.has(name):
            unsupported, reason = keys.classify_other(name, ctx.value(name), ctx.args)
            (ctx.arg_unsupported if unsupported else ctx.arg_ignored)(name, reason)
    _warn_defaults_used(ctx, easy.implied if easy is not None else ())
    return ctx.result


def _fill_sd_scripts_defaults(ctx: ImportContext) -> None:
    filled = {k: v for k, v in keys.SD_SCRIPTS_DEFAULTS.items() if k not in ctx.args}
    for name, value in filled.items():
        ctx.args[name], ctx.shown[name] = value, name
        ctx.defaulted.add(name)


def _warn_defaults_used(ctx: ImportContext, implied: Collection[str]) -> None:
    ctx.defaults_used = [name for name in ctx.defaults_used if name not in implied]
    if ctx.defaults_used:
        ctx.warn(f"not in {Path(ctx.file).name}, so sd-scripts' defaults are used (they differ from "
                 "LoRA Kiln's): " + ", ".join(f"{k} = {ctx.args[k]!r}" for k in ctx.defaults_used))
