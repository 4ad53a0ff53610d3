"""Text-encoder outputs computed once per distinct caption, for runs whose text encoders are
frozen and whose captions never change (see placement.can_cache_text_states)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from core.models.family import TextConditioning

EncodeCaptions = Callable[[list[str]], TextConditioning]


class TextStateCache:
    """Caption -> the family's conditioning for it. Kept in host memory (SD 1.x: 77 x 768
    values a caption, so 10,000 captions are ~1.2 GB in fp16, too much to park on the GPU)."""

    def __init__(self) -> None:
        self._states: dict[str, TextConditioning] = {}

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, caption: str) -> bool:
        return caption in self._states

    def fill(self, captions: Iterable[str], encode: EncodeCaptions, batch_size: int = 16,
             cancelled: Callable[[], bool] = lambda: False) -> int:
        """Encode every caption not cached yet, ``batch_size`` at a time; returns how many."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._states))
        for start in range(0, len(missing), batch_size):
            if cancelled():
                from core.training.control import Cancelled

                raise Cancelled()
            chunk = missing[start:start + batch_size]
            with torch.no_grad():
                encoded = encode(chunk).to("cpu")
            for caption, row in zip(chunk, encoded.rows()):
                self._states[caption] = row
        return len(missing)

    def conditioning(self, captions: list[str], device: torch.device) -> TextConditioning:
        """The batch's conditioning on ``device``; a caption never cached is a bug in the caller."""
        try:
            rows = [self._states[caption] for caption in captions]
        except KeyError as missing:
            raise LookupError(f"caption {missing} has no cached text-encoder states; cache every caption "
                              "of the plan before training") from None
        return TextConditioning.stack(rows).to(device)
