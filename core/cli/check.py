"""``lorakiln check PRESET [--set group.field=value ...]``: validate and show a preset."""

from __future__ import annotations

import argparse
import sys

from core.config.overrides import apply_overrides
from core.config.presets import PresetError, dumps_preset, find_preset, load_preset, save_preset
from core.system.words import count
from core.training.validation import ERROR, validate


def add_preset_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """PRESET and --set, shared by every command that takes a preset."""
    parser.add_argument("preset", nargs="?" if optional else None,
                        help="a preset file, or the name of a built-in preset (e.g. demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                        help="override one parameter, e.g. --set training.batch_size=2 "
                             "(repeatable; subsets: dataset.subsets[0].num_repeats=5)")


def load_with_overrides(args: argparse.Namespace):  # noqa: ANN201 - LoadedPreset
    """Load args.preset and apply args.overrides; raises PresetError listing every problem."""
    path = find_preset(args.preset)
    loaded = load_preset(path)
    problems = apply_overrides(loaded.config, args.overrides)
    if problems:
        raise PresetError("--set", problems)
    return loaded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_arguments(parser)
    parser.add_argument("--print", dest="show", choices=["sparse", "full"],
                        help="print the resulting preset as TOML (only non-defaults, or every field)")
    parser.add_argument("-o", "--output", metavar="FILE", help="save the resulting preset to FILE")
    parser.add_argument("--no-paths", action="store_true", help="do not check that files and folders exist")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_with_overrides(args)
    except PresetError as err:
        print(err, file=sys.stderr)
        return 2
    problems = validate(loaded.config, check_paths=not args.no_paths)
    source = loaded.path or args.preset
    print(f"preset: {source}" + (f" — {loaded.description}" if loaded.description else ""))
    for problem in problems:
        print(f"  {problem.severity}: {problem}")
    from core.data.masks import mask_summary

    print(mask_summary(loaded.config.dataset))
    if args.show:
        print(dumps_preset(loaded.config, sparse=args.show == "sparse", description=loaded.description))
    if args.output:
        save_preset(loaded.config, args.output, description=loaded.description)
        print(f"saved {args.output}")
    n_errors = sum(p.severity == ERROR for p in problems)
    if not n_errors:
        from core.training.vram_forecast import forecast_vram

        try:
            print("\n".join(forecast_vram(loaded.config).lines()))
        except Exception as err:  # noqa: BLE001 - the check's verdict stands without a forecast
            print(f"VRAM forecast: cannot forecast ({err})")
        _print_validation_set(loaded.config, loaded.path)
    print("OK" if not n_errors else f"{count(n_errors, 'error')}: training would not start")
    return 1 if n_errors else 0


def _print_validation_set(config, preset_path) -> None:  # noqa: ANN001 - TrainConfig, Path | None
    """How many images the validation split or folder holds out, when one is set."""
    if not config.dataset.validation_split and not config.dataset.validation_dir:
        return
    from core.data.plan import plan_dataset

    try:
        plan = plan_dataset(config.dataset, config.training,
                            base_dir=preset_path.parent if preset_path else None)
    except Exception as err:  # noqa: BLE001 - DatasetError, BucketError: the run would say the same
        print(f"validation: cannot plan the dataset ({err})")
        return
    print(f"validation: {len(plan.validation)} images held out for validation, "
          f"{len(plan.images)} images train")
