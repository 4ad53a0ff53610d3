"""How many CLIP tokens captions hold, for the plan's warning about captions past the limit.

Counting tokenises every caption, which for ten thousand long captions takes seconds, so
the counts are kept per caption text: re-planning (another resolution, batch size or token
length) counts only captions it has not seen. transformers is imported inside the
functions: core modules must stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from core.config.schema import MAX_TOKEN_LENGTHS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import CLIPTokenizer

# Characters of a caption that are counted: enough for the longest limit at any token
# length (as core.training.text cuts captions), so a megabyte caption is not tokenised
# whole; its count is then "at least" this many tokens, which is all the warning needs.
COUNTED_CHARACTERS = (max(MAX_TOKEN_LENGTHS) + 2) * 64
_MAX_CACHED = 200_000  # caption texts remembered; past this the cache starts again

_counts: dict[str, int] = {}


@lru_cache(maxsize=1)
def _tokenizer() -> "CLIPTokenizer":
    from core.models.sd15_files import load_tokenizer

    return load_tokenizer()


def _candidates(captions: Iterable[str], limit: int) -> set[str]:
    # A token is at least one UTF-8 byte: a caption of no more bytes than the limit is
    # within it without tokenising (most captions of a short-tag dataset).
    return {text for text in captions if len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit}


def captions_over(captions: Iterable[str], limit: int) -> dict[str, int]:
    """{caption: its token count} for each distinct caption of more than ``limit`` tokens
    (BOS and EOS not counted). A caption longer than COUNTED_CHARACTERS is counted up to
    there."""
    candidates = _candidates(captions, limit)
    counts = {text: _counts[text] for text in candidates if text in _counts}
    counts |= _count(sorted(candidates - counts.keys()))
    return {text: count for text, count in counts.items() if count > limit}


def count_ahead(captions: Iterable[str], cancelled: Callable[[], bool] | None = None,
                batch: int = 1000) -> None:
    """Count ``captions`` now (the dataset scan's worker thread does, after reading them), so
    that planning, which the GUI does on its own thread, finds them counted."""
    todo = sorted(text for text in _candidates(captions, min(MAX_TOKEN_LENGTHS)) if text not in _counts)
    for start in range(0, len(todo), batch):
        if cancelled is not None and cancelled():
            return
        _count(todo[start:start + batch])


def _count(texts: list[str]) -> dict[str, int]:
    if not texts:
        return {}
    cut = [text[:COUNTED_CHARACTERS] for text in texts]
    tokenizer = _tokenizer()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokeniser itself, without transformers' per-call overhead
        ids = [item.ids for item in backend.encode_batch(cut, add_special_tokens=False)]
    else:
        ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
    counts = {text: len(row) for text, row in zip(texts, ids)}
    if len(_counts) + len(counts) > _MAX_CACHED:
        _counts.clear()
    _counts.update(counts)
    return counts
