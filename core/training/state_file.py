"""Training state on disk without pickle: tensors in a safetensors file, everything else as
JSON in that file's metadata.

A run folder may come from someone else (a zip from a forum, a synced folder), so reading
one back must never run code from it. Pickle (``torch.save``) can run code on load; this
format cannot: safetensors holds raw tensor bytes, JSON holds data, and the structure is
rebuilt from a closed set of tags.

The JSON keeps what JSON alone would lose: tuples (Python's RNG state is one), dict keys
that are not strings (an optimizer's state is keyed by parameter index) and tensors (by a
name in the safetensors file). Anything else is refused when saving, so a new kind of
value in an optimizer's state shows up as a clear error, not as a file that loads wrong.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import torch

FORMAT = "lorakiln-training-state-1"
_FORMAT_KEY = "format"
_DATA_KEY = "state"
# Tags of the JSON structure: each encoded container is a one-key object.
_TENSOR, _TUPLE, _DICT, _FLOAT = "$tensor", "$tuple", "$dict", "$float"


class StateFileError(ValueError):
    """A state file that is not one this version wrote, or is damaged."""


def encode_state(value: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """(JSON text, tensors by name) for ``value``: nested dicts, lists, tuples, str, int,
    float, bool, None and tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(item: Any, where: str) -> Any:
        if item is None or isinstance(item, (bool, str)):
            return item
        if isinstance(item, int):
            return item
        if isinstance(item, float):
            return item if math.isfinite(item) else {_FLOAT: repr(item)}
        if isinstance(item, torch.Tensor):
            name = f"t{len(tensors)}"
            # A copy of its own: safetensors refuses tensors that share memory.
            tensors[name] = item.detach().to("cpu").contiguous().clone()
            return {_TENSOR: name}
        if isinstance(item, tuple):
            return {_TUPLE: [encode(v, f"{where}[{i}]") for i, v in enumerate(item)]}
        if isinstance(item, list):
            return [encode(v, f"{where}[{i}]") for i, v in enumerate(item)]
        if isinstance(item, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in item):
                return {k: encode(v, f"{where}.{k}") for k, v in item.items()}
            return {_DICT: [[encode(k, f"{where} key"), encode(v, f"{where}[{k!r}]")] for k, v in item.items()]}
        raise StateFileError(f"cannot save {where} in the training state: a {type(item).__name__} "
                             "is not one of the kinds of value the state file holds")

    return json.dumps(encode(value, "state"), separators=(",", ":")), tensors


def decode_state(text: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The value ``encode_state`` was given, rebuilt from its JSON and tensors."""
    def decode(item: Any) -> Any:
        if isinstance(item, list):
            return [decode(v) for v in item]
        if not isinstance(item, dict):
            return item
        if len(item) == 1:
            (tag, inner), = item.items()
            if tag == _TENSOR:
                if not isinstance(inner, str) or inner not in tensors:
                    raise StateFileError(f"refers to a tensor '{inner}' that the file does not hold")
                return tensors[inner]
            if tag == _TUPLE:
                return tuple(decode(v) for v in _expect_list(inner))
            if tag == _DICT:
                pairs = _expect_list(inner)
                if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                    raise StateFileError("holds a malformed mapping")
                return {_hashable(decode(k)): decode(v) for k, v in pairs}
            if tag == _FLOAT:
                if inner not in ("inf", "-inf", "nan"):
                    raise StateFileError(f"holds an unknown number '{inner}'")
                return float(inner)
        return {k: decode(v) for k, v in item.items()}

    try:
        structure = json.loads(text)
    except ValueError as error:
        raise StateFileError(f"its description is not valid JSON ({error})") from None
    return decode(structure)


def _expect_list(value: Any) -> list:
    if not isinstance(value, list):
        raise StateFileError("holds a malformed list")
    return value


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise StateFileError("holds a mapping with an unusable key")
    return key


def write_state_bytes(value: Any) -> bytes:
    """The bytes of a state file for ``value`` (written atomically by the caller)."""
    import safetensors.torch

    text, tensors = encode_state(value)
    return safetensors.torch.save(tensors, metadata={_FORMAT_KEY: FORMAT, _DATA_KEY: text})


def read_state_file(path: Path) -> Any:
    """The value saved in ``path``; StateFileError (naming the file) when it is not a state
    file this version wrote or it is damaged. Reads data only: nothing in it can run."""
    import safetensors
    import safetensors.torch

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise StateFileError(f"{path}: not a regular file, so it is not read as training state")
        data = path.read_bytes()
    except OSError as error:
        raise StateFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        metadata = _header_metadata(data)
        loaded = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as error:
        first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise StateFileError(f"{path}: not a readable training state file; it is damaged or cut short "
                             f"({first_line})") from None
    if metadata.get(_FORMAT_KEY) != FORMAT or not isinstance(metadata.get(_DATA_KEY), str):
        raise StateFileError(f"{path}: not a LoRA Kiln training state file (format "
                             f"'{str(metadata.get(_FORMAT_KEY, 'none'))[:40]}')")
    try:
        return decode_state(metadata[_DATA_KEY], loaded)
    except StateFileError as error:
        raise StateFileError(f"{path}: a damaged training state file: it {error}") from None
    except RecursionError:
        raise StateFileError(f"{path}: a damaged training state file: it is nested too deeply") from None


def _header_metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("its header is longer than the file")
    header = json.loads(data[8:8 + size].decode("utf-8"))
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    return metadata if isinstance(metadata, dict) else {}
