"""What a LoRA file holds and how it was trained, read from its tensors and metadata.

:func:`inspect_lora` gathers it once as a plain dict (``lorakiln inspect --json`` prints it,
the GUI shows it); :func:`format_inspection` is the text view. Files from other tools, with
little or no metadata, still show what their tensors tell.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

TOP_TAGS = 20
_ARCHITECTURES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown"}
_DTYPES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "float"}
# (label, metadata key) of the training settings shown, in the order shown.
TRAINING_KEYS: tuple[tuple[str, str], ...] = (
    ("base model", "ss_sd_model_name"), ("model version", "ss_base_model_version"),
    ("resolution", "ss_resolution"), ("epochs", "ss_num_epochs"), ("saved at epoch", "ss_epoch"),
    ("saved at step", "ss_steps"), ("max train steps", "ss_max_train_steps"),
    ("optimizer", "ss_optimizer"), ("learning rate", "ss_learning_rate"), ("U-Net LR", "ss_unet_lr"),
    ("text encoder LR", "ss_text_encoder_lr"), ("scheduler", "ss_lr_scheduler"),
    ("warmup steps", "ss_lr_warmup_steps"), ("batch size", "ss_batch_size_per_device"),
    ("total batch size", "ss_total_batch_size"), ("grad accumulation", "ss_gradient_accumulation_steps"),
    ("mixed precision", "ss_mixed_precision"), ("seed", "ss_seed"), ("clip skip", "ss_clip_skip"),
    ("noise offset", "ss_noise_offset"), ("min SNR gamma", "ss_min_snr_gamma"),
    ("network module", "ss_network_module"), ("network args", "ss_network_args"),
    ("training images", "ss_num_train_images"), ("reg images", "ss_num_reg_images"),
    ("batches per epoch", "ss_num_batches_per_epoch"), ("buckets", "ss_enable_bucket"),
    ("bucket no upscale", "ss_bucket_no_upscale"), ("shuffle caption", "ss_shuffle_caption"),
    ("keep tokens", "ss_keep_tokens"), ("flip aug", "ss_flip_aug"), ("cached latents", "ss_cache_latents"),
    ("output name", "ss_output_name"), ("title", "modelspec.title"), ("comment", "ss_training_comment"),
)


class InspectError(ValueError):
    """Not a LoRA file, or not readable; the message says which and names the file."""


def _parse(text: str) -> Any:
    """A metadata string as a value: sd-scripts writes str() of Python values, nested as JSON."""
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    for reader in (json.loads, ast.literal_eval):
        try:
            value = reader(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        value = list(value) if isinstance(value, tuple) else value
        if isinstance(value, (int, float, str, list, dict)):  # what JSON can hold, for --json
            return value
    return text


def _date(value: Any) -> str | None:
    try:
        return datetime.datetime.fromtimestamp(float(value)).isoformat(sep=" ", timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _file_hash(path: Path) -> str | None:
    """sha256 of the tensor bytes after the safetensors header: what sshs_model_hash names."""
    try:
        with path.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header_len)
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}  # other tools write odd shapes: skip them


def _dataset(meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(folders, buckets, tag frequency) from ss_dataset_dirs & co., or ss_datasets (dataset config)."""
    folders: list[dict[str, Any]] = []
    buckets: list[dict[str, Any]] = []
    tags = dict(_table(meta.get("ss_tag_frequency")))
    for key, reg in (("ss_dataset_dirs", False), ("ss_reg_dataset_dirs", True)):
        for name, entry in _table(meta.get(key)).items():
            entry = _table(entry)
            folders.append({"name": name, "repeats": entry.get("n_repeats"), "images": entry.get("img_count"),
                            "reg": reg})
    infos = [_table(meta.get("ss_bucket_info"))]
    datasets = meta.get("ss_datasets")
    for dataset in map(_table, datasets if isinstance(datasets, list) else []):  # sd-scripts' dataset config
        infos.append(_table(dataset.get("bucket_info")))
        tags.update(_table(dataset.get("tag_frequency")))
        for subset in map(_table, dataset.get("subsets") or []):
            folders.append({"name": subset.get("image_dir"), "repeats": subset.get("num_repeats"),
                            "images": subset.get("img_count"), "reg": bool(subset.get("is_reg"))})
    for info in infos:
        entries = sorted(_table(info.get("buckets")).items(), key=lambda item: str(item[0]).zfill(8))
        for _, entry in entries:
            resolution = _table(entry).get("resolution")
            if isinstance(resolution, list) and len(resolution) == 2:
                buckets.append({"resolution": resolution, "count": _table(entry).get("count")})
    return folders, buckets, tags


def inspect_lora(path: str | Path) -> dict[str, Any]:
    """Everything known about a LoRA file as plain JSON-able values; raises InspectError."""
    from core.kohya.lora_format import KohyaFormatError, describe_lora, read_kohya_file

    file = Path(path)
    if not file.is_file():
        raise InspectError(f"{file}: no such file")
    try:
        tensors, raw_meta = read_kohya_file(file)
    except KohyaFormatError as err:
        raise InspectError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise InspectError(f"{file.name}: cannot read it as a LoRA file ({err})") from None
    summary = describe_lora(tensors, raw_meta)
    if summary.n_modules == 0:
        kind = "a diffusers/peft LoRA" if any("lora_A" in k for k in tensors) else "not a LoRA"
        first = next(iter(tensors), "(no tensors)")
        raise InspectError(f"{file.name}: not a Kohya-format LoRA or LyCORIS file ({kind}): none of its "
                           f"{len(tensors)} tensors is a network module's (first: {first})")
    meta = {key: _parse(value) for key, value in raw_meta.items()}
    folders, buckets, tags = _dataset(meta)
    totals: Counter[str] = Counter()
    for counts in tags.values():
        totals.update({tag: n for tag, n in _table(counts).items() if isinstance(n, int)})
    started, finished = meta.get("ss_training_started_at"), meta.get("ss_training_finished_at")
    computed = _file_hash(file) if file.suffix.lower() == ".safetensors" else None
    stored = raw_meta.get("sshs_model_hash")
    # the file's precision: its weights' dtype (alpha and IA3's on_input are scalars beside them)
    weights = [t for k, t in tensors.items() if not k.endswith((".alpha", ".on_input"))]
    return {
        "file": str(file), "file_size": file.stat().st_size,
        "architecture": summary.architecture,
        "network": summary.network,
        "lokr_full_rank_modules": summary.full_rank,
        "modules": {"total": summary.n_modules, "unet": summary.n_unet, "text_encoder": summary.n_te},
        "dim": sorted(summary.dims), "alpha": sorted(summary.alphas),
        "conv_dim": sorted(summary.conv_dims), "conv_alpha": sorted(summary.conv_alphas),
        "precision": sorted({_DTYPES.get(str(t.dtype), str(t.dtype)) for t in weights}),
        "training": {key: meta[key] for _, key in TRAINING_KEYS if key in meta},
        "dataset_dirs": folders,
        "buckets": buckets,
        "mean_ar_error": _table(meta.get("ss_bucket_info")).get("mean_img_ar_error"),
        "top_tags": [[tag, n] for tag, n in sorted(totals.items(), key=lambda i: (-i[1], i[0]))[:TOP_TAGS]],
        "session": {"id": meta.get("ss_session_id"), "started": _date(started), "finished": _date(finished),
                    "seconds": round(float(finished) - float(started), 1)
                    if isinstance(started, (int, float)) and isinstance(finished, (int, float)) else None},
        "hashes": {"sshs_model_hash": stored, "sshs_legacy_hash": raw_meta.get("sshs_legacy_hash"),
                   "computed_model_hash": computed,
                   "matches": None if not stored or not computed else stored == computed},
        "metadata": raw_meta,
    }


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "-"


def format_inspection(info: dict[str, Any]) -> str:
    mods = info["modules"]
    lines = [f"{Path(info['file']).name}  ({_size(info['file_size'])})",
             f"  architecture      {_ARCHITECTURES.get(info['architecture'], info['architecture'])}",
             f"  network           {info['network']}: {mods['total']} modules "
             f"({mods['unet']} U-Net, {mods['text_encoder']} text encoder)",
             f"  dim / alpha       {_numbers(info['dim'])} / {_numbers(info['alpha'])}"]
    if info["conv_dim"]:
        lines.append(f"  conv dim / alpha  {_numbers(info['conv_dim'])} / {_numbers(info['conv_alpha'])}")
    if info.get("lokr_full_rank_modules"):
        lines.append(f"  full rank         {info['lokr_full_rank_modules']} LoKr modules with whole factors (scale 1)")
    lines.append(f"  precision         {', '.join(info['precision'])}")
    labels = dict((key, label) for label, key in TRAINING_KEYS)
    if info["training"]:
        lines.append("training")
        for key, value in info["training"].items():
            if value == "" or value == {}:
                continue
            if key == "ss_resolution" and isinstance(value, list) and len(value) == 2:
                shown = f"{value[0]}x{value[1]}"
            else:
                shown = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            lines.append(f"  {labels[key]:<18}{shown}")
    else:
        lines.append("training: no training metadata in this file")
    if info["dataset_dirs"]:
        lines.append("dataset")
        for d in info["dataset_dirs"]:
            lines.append(f"  {d['name']}: {d['repeats']} repeats, {d['images']} images" + (" (reg)" if d["reg"] else ""))
    if info["buckets"]:
        lines.append("buckets (resolution: images x repeats)")
        lines += [f"  {b['resolution'][0]}x{b['resolution'][1]}: {b['count']}" for b in info["buckets"]]
        if isinstance(info["mean_ar_error"], (int, float)):
            lines.append(f"  mean aspect-ratio error {info['mean_ar_error']:.4f}")
    if info["top_tags"]:
        lines.append(f"top tags (how many captions use each; {TOP_TAGS} at most)")
        lines.append("  " + ", ".join(f"{tag} ({n})" for tag, n in info["top_tags"]))
    session = info["session"]
    if any(session.values()):
        lines.append("session")
        lines += [f"  {label:<18}{session[key]}" for label, key in (("id", "id"), ("started", "started"),
                  ("finished", "finished"), ("duration (s)", "seconds")) if session[key] is not None]
    hashes = info["hashes"]
    lines.append("hashes")
    lines.append(f"  sshs_model_hash   {hashes['sshs_model_hash'] or '-'}"
                 + {True: " (matches the file)", False: " (DOES NOT match the file)", None: ""}[hashes["matches"]])
    if hashes["sshs_legacy_hash"]:
        lines.append(f"  sshs_legacy_hash  {hashes['sshs_legacy_hash']}")
    if not hashes["sshs_model_hash"] and hashes["computed_model_hash"]:
        lines.append(f"  computed          {hashes['computed_model_hash']}")
    shown_keys = {key for _, key in TRAINING_KEYS}
    others = [k for k in info["metadata"] if k not in shown_keys]
    if others:
        lines.append(f"{len(others)} more metadata keys (--json shows every key)")
    return "\n".join(lines)

