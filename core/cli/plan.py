"""``lorakiln plan DATASET_DIR``: buckets, batches and steps, exactly as training will use them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from core.data.buckets import BucketError
from core.cli.check import load_with_overrides
from core.config.schema import Duration, SubsetParams, TrainConfig
from core.data.scan import DatasetError, parse_kohya_folder_name
from core.data.plan import plan_dataset, plan_to_json
from core.data.plan_report import format_plan
from core.config.presets import PresetError


def _resolution(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a resolution: give 768 or 768,512") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a resolution: give 768 or 768,512")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", nargs="?", metavar="DATASET_DIR",
                        help="a Kohya training folder (N_name sub-folders) or a plain folder of images; "
                             "replaces the preset's image folders")
    parser.add_argument("--preset", help="take every setting from this preset (file or built-in name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                        help="override a preset parameter (repeatable)")
    parser.add_argument("--resolution", type=_resolution, help="768 or 768,512 (width,height)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--min-bucket-reso", type=int)
    parser.add_argument("--max-bucket-reso", type=int)
    parser.add_argument("--bucket-reso-steps", type=int)
    parser.add_argument("--no-upscale", action="store_true", default=None, help="sd-scripts' --bucket_no_upscale")
    parser.add_argument("--no-buckets", action="store_true", default=None, help="one bucket of exactly the resolution")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-train-steps", type=int)
    length.add_argument("--epochs", type=int)
    parser.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    parser.add_argument("--processes", type=int, default=1, help="number of training processes (GPUs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _is_kohya_root(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(e.is_dir() and (p := parse_kohya_folder_name(e.name)) is not None and p[0] >= 1
                       for e in entries)
    except OSError:
        return False  # the scan reports the folder problem with its field name


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.preset:
        args.preset, preset = args.preset, args.preset
        config = load_with_overrides(argparse.Namespace(preset=preset, overrides=args.overrides)).config
    elif args.overrides:
        raise PresetError("--set", [("", "--set needs --preset")])
    else:
        config = TrainConfig()
    data, training = config.dataset, config.training
    if args.dataset_dir:
        template = data.subsets[0] if data.subsets else SubsetParams()
        data.subsets = [replace(template, image_dir=args.dataset_dir,
                                kohya_layout=_is_kohya_root(args.dataset_dir))]
    for option, name in (("resolution", "resolution"), ("min_bucket_reso", "min_bucket_reso"),
                         ("max_bucket_reso", "max_bucket_reso"), ("bucket_reso_steps", "bucket_reso_steps")):
        if getattr(args, option) is not None:
            setattr(data, name, getattr(args, option))
    if args.no_upscale:
        data.bucket_no_upscale = True
    if args.no_buckets:
        data.enable_bucket = False
    if args.batch_size is not None:
        training.batch_size = args.batch_size
    if args.grad_accum is not None:
        training.gradient_accumulation_steps = args.grad_accum
    if args.epochs is not None:
        training.duration, training.max_train_epochs = Duration.EPOCHS, args.epochs
    if args.max_train_steps is not None:
        training.duration, training.max_train_steps = Duration.STEPS, args.max_train_steps
    return config


def _check_numbers(args: argparse.Namespace) -> str | None:
    for option in ("batch_size", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                   "max_train_steps", "epochs", "grad_accum", "processes"):
        value = getattr(args, option)
        if value is not None and value < 1:
            return f"--{option.replace('_', '-')} must be at least 1, got {value}"
    return None


def run(args: argparse.Namespace) -> int:
    if not args.dataset_dir and not args.preset:
        print("lorakiln plan: give a DATASET_DIR, a --preset, or both", file=sys.stderr)
        return 2
    problem = _check_numbers(args)
    if problem:
        print(f"lorakiln plan: {problem}", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
        plan = plan_dataset(config.dataset, config.training, num_processes=args.processes)
    except (PresetError, DatasetError, BucketError) as err:
        print(f"lorakiln plan: {err}", file=sys.stderr)
        return 2
    vram, vram_problem = forecast_for_plan(config, plan)
    if args.json:
        data = plan_to_json(plan)
        data["vram"] = vram.to_json() if vram is not None else {"error": vram_problem}
        json.dump(data, sys.stdout, ensure_ascii=False)
        print()
    else:
        title = args.dataset_dir or args.preset
        print(format_plan(plan, title=f"plan for {title}"))
        print("\n".join(vram.lines()) if vram is not None else f"VRAM forecast: {vram_problem}")
    return 0


def forecast_for_plan(config: TrainConfig, plan) -> tuple:  # noqa: ANN001 - DatasetPlan; (VramForecast | None, str)
    """The VRAM forecast at the plan's largest bucket (the resolution when it has none), or
    None and the reason it cannot be made (the run itself would say the same)."""
    from core.training.vram_forecast import forecast_vram, largest_bucket

    bucket = largest_bucket(list(plan.buckets), tuple(config.dataset.resolution))
    subsets = [s.params for s in plan.subsets] or None
    try:
        return forecast_vram(config, bucket=bucket, subsets=subsets), ""
    except Exception as err:  # noqa: BLE001 - the plan stays useful without a forecast
        return None, f"cannot forecast ({err})"
