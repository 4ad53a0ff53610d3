"""Text-encoder outputs computed once per distinct caption, for runs whose text encoders are
frozen and whose captions never change (see placement.can_cache_text_states)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from core.models.family import TextConditioning
from core.system.atomic import write_bytes_atomic

EncodeCaptions = Callable[[list[str]], TextConditioning]


class TextStateCache:
    """Caption -> the family's conditioning for it. Kept in host memory (SD 1.x: 77 x 768
    values a caption, so 10,000 captions are ~1.2 GB in fp16, too much to park on the GPU)."""

    def __init__(self, folder: Path | None = None, identity: str = "") -> None:
        """With ``folder``, each caption's conditioning is also kept on disk there (sd-scripts'
        cache_text_encoder_outputs_to_disk), under a name made of ``identity`` (what else the
        encoding depends on: model, family, clip skip, token length, precision) and the caption,
        so the next run with the same model and captions encodes nothing."""
        self._states: dict[str, TextConditioning] = {}
        self._folder = folder
        self._identity = identity
        self.from_disk = 0  # captions read back from the folder by the last fill

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, caption: str) -> bool:
        return caption in self._states

    def fill(self, captions: Iterable[str], encode: EncodeCaptions, batch_size: int = 16,
             cancelled: Callable[[], bool] = lambda: False) -> int:
        """Encode every caption not cached yet, ``batch_size`` at a time; returns how many."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._states))
        self.from_disk = 0
        if self._folder is not None:
            for caption in missing:
                stored = self._read(caption)
                if stored is not None:
                    self._states[caption] = stored
                    self.from_disk += 1
            missing = [c for c in missing if c not in self._states]
        for start in range(0, len(missing), batch_size):
            if cancelled():
                from core.training.control import Cancelled

                raise Cancelled()
            chunk = missing[start:start + batch_size]
            with torch.no_grad():
                encoded = encode(chunk).to("cpu")
            for caption, row in zip(chunk, encoded.rows()):
                self._states[caption] = row
                if self._folder is not None:
                    self._write(caption, row)
        return len(missing)

    def _path(self, caption: str) -> Path:
        assert self._folder is not None
        digest = hashlib.sha256(f"{self._identity}\n{caption}".encode("utf-8", "surrogatepass")).hexdigest()
        return self._folder / digest[:2] / f"{digest[:32]}.safetensors"

    def _read(self, caption: str) -> TextConditioning | None:
        """The stored conditioning, or None when there is none or it cannot be used (a damaged
        or foreign file is encoded again and overwritten)."""
        from safetensors.torch import load_file

        path = self._path(caption)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            return TextConditioning(tensors["states"], tensors.get("pooled"))
        except Exception:  # noqa: BLE001 - any unreadable file means "not cached"
            return None

    def _write(self, caption: str, row: TextConditioning) -> None:
        from safetensors.torch import save

        tensors = {"states": row.states.contiguous()}
        if row.pooled is not None:
            tensors["pooled"] = row.pooled.contiguous()
        path = self._path(caption)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, save(tensors))

    def conditioning(self, captions: list[str], device: torch.device) -> TextConditioning:
        """The batch's conditioning on ``device``; a caption never cached is a bug in the caller."""
        try:
            rows = [self._states[caption] for caption in captions]
        except KeyError as missing:
            raise LookupError(f"caption {missing} has no cached text-encoder states; cache every caption "
                              "of the plan before training") from None
        return TextConditioning.stack(rows).to(device)
