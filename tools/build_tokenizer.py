"""Build the shipped CLIP tokenizer (resources/sd15/tokenizer/) from open_clip's BPE file.

Run by hand, once; the output is committed as data so the app never needs a model hub.

    python tools/build_tokenizer.py [PATH/TO/open_clip_torch-3.3.0-py3-none-any.whl]

Without an argument the wheel is fetched with ``python -m pip download --no-deps`` into a
temporary folder (only the wheel file is read; open_clip is never installed). The BPE
merge list lives in the wheel as ``open_clip/bpe_simple_vocab_16e6.txt.gz``; the vocabulary
is derived from it the way CLIP's own tokenizer does:

* every byte 0..255 gets a printable unicode character (printable Latin-1 bytes stand for
  themselves, the others are shifted to 256, 257, ...);
* the first 48 894 merges (after the header line) are used;
* ids: the 256 byte characters, the same 256 with ``</w>``, one token per merge (the pair
  concatenated), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

The output is deterministic: the same wheel always gives byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OPEN_CLIP_VERSION = "3.3.0"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 256 - 256 - 2  # 48894
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "resources" / "sd15" / "tokenizer"


def byte_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte table: bytes in insertion order, printable ones first."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def read_bpe_lines(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(BPE_MEMBER)
    return gzip.decompress(raw).decode("utf-8").split("\n")


def build(lines: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merge_lines = lines[1 : NUM_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for line in merge_lines:
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"unexpected merge line: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != NUM_MERGES:
        raise ValueError(f"expected {NUM_MERGES} merges, found {len(merges)}")

    tokens = list(byte_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def _special(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_config() -> dict:
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(VOCAB_SIZE - 2): _special(BOS),
            str(VOCAB_SIZE - 1): _special(EOS),
        },
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS,
    }


def special_tokens_map() -> dict:
    def entry(content: str) -> dict:
        return {k: v for k, v in _special(content).items() if k != "special"}

    return {"bos_token": entry(BOS), "eos_token": entry(EOS), "pad_token": entry(EOS), "unk_token": entry(EOS)}


def write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=indent, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8", newline="\n")


def write_all(out: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # vocab.json on one line (as the hub's CLIP tokenizers ship it): it is 49k entries.
    write_json(out / "vocab.json", vocab, indent=None)
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out / "merges.txt").write_text(merges_text, encoding="utf-8", newline="\n")
    write_json(out / "tokenizer_config.json", tokenizer_config())
    write_json(out / "special_tokens_map.json", special_tokens_map())


def download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "-d", str(dest), f"open_clip_torch=={OPEN_CLIP_VERSION}",
    ]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise FileNotFoundError("pip download produced no open_clip_torch wheel")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", nargs="?", type=Path, help="open_clip_torch wheel (downloaded if omitted)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(Path(tmp))
        lines = read_bpe_lines(wheel)
    vocab, merges = build(lines)
    write_all(args.out, vocab, merges)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
