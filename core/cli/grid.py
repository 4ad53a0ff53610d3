"""``lorakiln grid RUN_OR_LORA... -o OUT.png``: a labelled image grid that compares LoRAs.

Rows are the given runs (their final LoRAs) and LoRA files, or with --checkpoints every
checkpoint of one run; columns are the prompts, or with --seeds / --sizes the first prompt
at each seed or size. What is not given comes from the first run's config.toml (or that of
the run folder a LoRA file lies in): base model, VAE, clip skip, v-prediction and the
sample prompts, so ``lorakiln grid RUN -o grid.png`` needs nothing else when the run had
sample prompts.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

from core.config.schema import MAX_TOKEN_LENGTHS, Sampler, SamplingParams
from core.studies.grid import (COLUMN_KINDS, MAX_SEED, GridError, GridRow, GridSpec, base_model_from_metadata, check_spec,
                       find_run_dir, grid_columns, grid_rows, run_config, spec_from_run)
from core.studies.grid_rows import lora_metadata
from core.config.prompts import PromptError, SamplePrompt, parse_prompt_line, parse_prompts
from core.system.resources import is_builtin

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of whole numbers like 1,2,3") from None
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(f"'{text}': give seeds from 0 to {MAX_SEED}, like 1,2,3")
    return seeds


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        width, _, height = part.partition("x")
        try:
            size = (int(width), int(height or width))  # "768" is 768x768
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{part}' is not a size like 512x768") from None
        if any(not 64 <= v <= 4096 or v % 8 for v in size):
            raise argparse.ArgumentTypeError(f"{part}: width and height must be multiples of 8 from 64 to 4096")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, like 512x512,768x768")
    return sizes


def _number(kind: type, low: float, high: float):  # noqa: ANN202 - an argparse type
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a {'whole ' if kind is int else ''}number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value
    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="RUN_OR_LORA",
                        help="run folders (their final LoRA) or LoRA files; one row each, in this order")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--checkpoints", action="store_true",
                        help="rows are every checkpoint of ONE run in training order, then its final LoRA")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt in Kohya syntax ('a cat --w 512 --h 768 --d 7 --n blurry'); repeat for "
                             "more; replaces the run's sample prompts")
    parser.add_argument("--prompts-file", metavar="FILE", help="prompts, one per line, Kohya syntax")
    parser.add_argument("--columns", choices=COLUMN_KINDS,
                        help="what changes from column to column (default: prompts; seeds with --seeds, "
                             "resolutions with --sizes); seeds and resolutions use the first prompt")
    parser.add_argument("--seeds", type=_seeds, metavar="1,2,3", help="one column per seed")
    parser.add_argument("--sizes", type=_sizes, metavar="512x512,768x768", help="one column per width x height")
    parser.add_argument("--strength", type=_number(float, -10, 10), default=1.0, metavar="S",
                        help="LoRA strength (multiplier of its effect; 0 draws the base model; default 1)")
    parser.add_argument("--base", metavar="MODEL",
                        help="base model to generate with (default: the run's; for a LoRA file outside a run, "
                             "the one its metadata names if that file is here)")
    parser.add_argument("--steps", type=_number(int, 1, 1000), metavar="N", help="sampling steps for every cell")
    parser.add_argument("--cfg", type=_number(float, 0, 50), metavar="X", help="CFG scale for every cell")
    parser.add_argument("--sampler", choices=[s.value for s in Sampler], help="sampler for every cell")
    parser.add_argument("--base-row", action="store_true",
                        help="add a first row drawn by the base model without LoRA, for reference")


def _rows(sources: list[Path], checkpoints: bool) -> list[GridRow]:
    from core.studies.grid import rows_from_runs

    if checkpoints and (len(sources) != 1 or not sources[0].is_dir()):
        raise GridError("--checkpoints takes exactly one run folder")
    rows: list[tuple[GridRow, str]] = []  # with the longer label used when labels repeat
    for source in sources:
        if source.is_dir():
            found = rows_from_runs([source], checkpoints)
            rows += [(row, row.label if checkpoints else source.name) for row in found]
        else:
            rows.append((GridRow(source.stem, source), f"{source.parent.name}/{source.stem}"))
    labels = [row.label for row, _ in rows]
    return [replace(row, label=long) if labels.count(row.label) > 1 else row for row, long in rows]


def _prompts(args: argparse.Namespace, defaults: SamplingParams) -> list[SamplePrompt]:
    prompts: list[SamplePrompt] = []
    if args.prompts_file:
        path = Path(args.prompts_file).expanduser()
        from core.system.safe_read import MiB, FileRefused, read_text_file

        try:
            # Only a regular file of a prompt list's size: /dev/zero or a FIFO must not hang the grid.
            prompts += parse_prompts(read_text_file(path, limit=MiB, what="--prompts-file"),
                                     defaults)
        except FileRefused as err:
            raise GridError(f"{path}: cannot read the prompts file ({err.reason})") from None
        except OSError as err:
            raise GridError(f"{path}: cannot read the prompts file ({err.strerror or err})") from None
        except UnicodeDecodeError:
            raise GridError(f"{path}: the prompts file is not UTF-8 text") from None
        except PromptError as err:
            raise GridError(f"{path}: {err}") from None
    for number, text in enumerate(args.prompt, start=1):
        try:
            prompts.append(parse_prompt_line(text, defaults, number))
        except PromptError as err:
            raise GridError(f"--prompt {number} ('{text}'): {str(err).partition(': ')[2]}") from None
    return prompts


def _column_kind(args: argparse.Namespace) -> str:
    if args.seeds and args.sizes:
        raise GridError("--seeds and --sizes both make the columns; give one of them")
    kind = args.columns or ("seeds" if args.seeds else "resolutions" if args.sizes else "prompts")
    for option, value, wanted in (("--seeds", args.seeds, "seeds"), ("--sizes", args.sizes, "resolutions")):
        if value and kind != wanted:
            raise GridError(f"{option} makes {wanted} columns; it does not go with --columns {kind}")
    if kind == "seeds" and not args.seeds:
        raise GridError("--columns seeds needs the seeds: add e.g. --seeds 1,2,3")
    if kind == "resolutions" and not args.sizes:
        raise GridError("--columns resolutions needs the sizes: add e.g. --sizes 512x512,768x768")
    return kind


def _settings_from_lora(path: Path) -> dict[str, object]:
    """Clip skip, prompt token length and prediction type as a LoRA's metadata records them (sd-scripts and ours)."""
    meta = lora_metadata(path)
    skip = meta.get("ss_clip_skip", "") or meta.get("modelspec.encoder_layer", "")
    length = meta.get("ss_max_token_length", "")  # "None" where sd-scripts ran without it: 75
    return {"clip_skip": int(skip) if skip.isdigit() and 1 <= int(skip) <= 12 else 1,
            "max_token_length": int(length) if length in {str(n) for n in MAX_TOKEN_LENGTHS} else 75,
            "v_parameterization": meta.get("ss_v_parameterization") == "True"
            or meta.get("modelspec.prediction_type") == "v"}


def build_spec(args: argparse.Namespace) -> GridSpec:
    """The grid the command line asks for; GridError for anything that does not fit."""
    sources = [Path(s).expanduser() for s in args.sources]
    for source in sources:
        if not source.exists():
            raise GridError(f"{source}: no such run folder or LoRA file")
        if source.is_file() and source.suffix.lower() not in LORA_SUFFIXES:
            raise GridError(f"{source}: not a run folder or a LoRA file ({', '.join(LORA_SUFFIXES)})")
    rows = _rows(sources, args.checkpoints)
    runs = [s if s.is_dir() else find_run_dir(s) for s in sources]
    context = next((run for run in runs if run is not None), None)
    if context is not None:
        spec = spec_from_run(context, rows)
    else:
        spec = GridSpec(rows=rows, prompts=[], base_model="", **_settings_from_lora(sources[0]))
    if args.base:
        spec.base_model = args.base if is_builtin(args.base) else str(Path(args.base).expanduser().resolve())
    elif context is None:
        found = base_model_from_metadata(sources[0])
        if found is None:
            named = lora_metadata(sources[0]).get("ss_sd_model_name", "")
            said = f"its metadata names '{named}', which is not a file here" if named else "its metadata names none"
            raise GridError(f"{sources[0].name}: which base model? {said}; give one with --base MODEL")
        spec.base_model = found
    else:
        others = {run_config(run).model.base_model for run in runs if run is not None} - {spec.base_model}
        if others:
            print(f"note: the runs were trained on different base models; the grid uses {spec.base_model} "
                  "(choose another with --base)", file=sys.stderr)
    given = _prompts(args, run_config(context).sampling if context is not None else SamplingParams())
    spec.prompts = given or spec.prompts
    if not spec.prompts:
        raise GridError("no prompts: the run has no sample prompts; give some with --prompt TEXT or "
                        "--prompts-file FILE")
    changes = {key: value for key, value in (("steps", args.steps), ("cfg_scale", args.cfg),
                                             ("sampler", Sampler(args.sampler) if args.sampler else None))
               if value is not None}
    spec.prompts = [replace(p, **changes) for p in spec.prompts]
    spec.column_kind = _column_kind(args)
    spec.seeds, spec.resolutions = args.seeds or [], args.sizes or []
    spec.strength, spec.include_base_row = args.strength, args.base_row
    check_spec(spec)
    return spec


def _print_progress(done: int, total: int) -> None:
    if done:  # 0 comes before the model loads
        print(f"cell {done}/{total}", flush=True)


def run(args: argparse.Namespace) -> int:
    from core.studies.grid import make_grid, save_grid

    output = Path(args.output).expanduser()
    try:
        if output.suffix.lower() != ".png":
            raise GridError(f"{output.name}: the grid is saved as a PNG; give the file name a .png ending")
        spec = build_spec(args)
        if spec.column_kind != "prompts" and len(spec.prompts) > 1:
            kind = "seed" if spec.column_kind == "seeds" else "size"
            print(f"note: the {kind} columns use the first prompt only", file=sys.stderr)
        rows, columns = len(grid_rows(spec)), len(grid_columns(spec))
        print(f"{rows} rows x {columns} columns, base model {spec.base_model}", flush=True)
        image = make_grid(spec, progress=_print_progress)
        path = save_grid(image, output, spec)
    except GridError as err:
        print(f"lorakiln grid: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
