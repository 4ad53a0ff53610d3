"""How many CLIP tokens captions hold, for the plan's warning about captions past the limit.

Counting tokenises every caption, which for ten thousand long captions takes seconds, so
the counts are kept per caption text: re-planning (another resolution, batch size or token
length) counts only captions it has not seen. transformers is imported inside the
functions: core modules must stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from core.config import MAX_TOKEN_LENGTHS

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
    from core.sd15_files import load_tokenizer

    return load_tokenizer()


def captions_over(captions: Iterable[str], limit: int) -> dict[str, int]:
    """{caption: its token count} for each distinct caption of more than ``limit`` tokens
    (BOS and EOS not counted). A caption longer than COUNTED_CHARACTERS is counted up to
    there."""
    # A token is at least one UTF-8 byte: a caption of no more bytes than the limit is
    # within it without tokenising (most captions of a short-tag dataset).
    candidates = {text for text in captions if len(text) > limit // 4
                  and len(text.encode("utf-8", "surrogatepass")) > limit}
    _count(sorted(text for text in candidates if text not in _counts))
    return {text: _counts[text] for text in candidates if _counts[text] > limit}


def _count(texts: list[str]) -> None:
    if not texts:
        return
    if len(_counts) + len(texts) > _MAX_CACHED:
        _counts.clear()
    cut = [text[:COUNTED_CHARACTERS] for text in texts]
    tokenizer = _tokenizer()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokeniser itself, without transformers' per-call overhead
        ids = [item.ids for item in backend.encode_batch(cut, add_special_tokens=False)]
    else:
        ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
    _counts.update((text, len(row)) for text, row in zip(texts, ids))
