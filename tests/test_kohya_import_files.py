"""The files a Kohya config names are read only when they are what the config says.

A config can name any path as its prompt file or dataset config: /dev/zero (endless), a
FIFO (opening it waits for a writer), a huge or binary file, a system file. The import
refuses the first four with a reason that names the file, and says what it read.

Each import that could hang or fill memory runs in a child process with a memory cap and
a time bound, so a regression fails the test instead of hanging or exhausting the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.cli.import_kohya import format_report
from core.kohya.import_config import import_kohya
from core.kohya.import_misc import MAX_PROMPT_FILE_BYTES

ROOT = Path(__file__).resolve().parent.parent
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero on this system")

_CHILD = textwrap.dedent("""
    import json, resource, sys
    limit = 1 << 30  # reading /dev/zero whole would pass this at once
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from core.kohya.import_config import KohyaImportError, import_kohya
    try:
        result = import_kohya(sys.argv[1:])
    except KohyaImportError as error:
        print(json.dumps({"error": str(error)}))
    else:
        print(json.dumps({"unsupported": {u.key: u.reason for u in result.unsupported},
                          "mapped": [m.key for m in result.mapped], "warnings": result.warnings,
                          "prompts": result.config.sampling.prompts}))
""")


def _import_in_child(*files: Path) -> dict:
    # 120 s is a bound on a hang, not a timing: the import itself takes well under a second.
    done = subprocess.run([sys.executable, "-c", _CHILD, *map(str, files)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _config(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in values.items()), "utf-8")
    return path


@needs_dev_zero
def test_a_prompt_file_that_is_dev_zero_is_refused_not_read(tmp_path):
    result = _import_in_child(_config(tmp_path, sample_prompts="/dev/zero"))
    reason = result["unsupported"]["sample_prompts"]
    assert "/dev/zero" in reason and "is a device" in reason
    assert "sample_prompts" not in result["mapped"]


@needs_fifo
def test_a_prompt_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "prompts.txt")
    result = _import_in_child(_config(tmp_path, sample_prompts="prompts.txt"))
    reason = result["unsupported"]["sample_prompts"]
    assert str(tmp_path / "prompts.txt") in reason and "named pipe (FIFO)" in reason


def test_a_prompt_file_larger_than_the_cap_is_refused(tmp_path):
    (tmp_path / "prompts.txt").write_text("a cat, sitting\n" * (MAX_PROMPT_FILE_BYTES // 15 + 1), "utf-8")
    result = import_kohya([_config(tmp_path, sample_prompts="prompts.txt")])
    reason = {u.key: u.reason for u in result.unsupported}["sample_prompts"]
    assert "prompts.txt" in reason and "more than the 256 KiB allowed here" in reason
    assert result.config.sampling.prompts != (tmp_path / "prompts.txt").read_text("utf-8")


@pytest.mark.parametrize("content, expected", [
    (b"a cat\x00\x01\x02\xff binary", "holds NUL bytes"),
    (b"\x89PNG\r\n\x1a\n image bytes", "is not UTF-8 text"),
    ("a cat\nan owl".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (b"a cat\n\x1b[31mcoloured log\x1b[0m\n", "control character (U+001B) on line 2"),
])
def test_a_prompt_file_that_is_not_text_is_refused(tmp_path, content, expected):
    (tmp_path / "prompts.txt").write_bytes(content)
    result = import_kohya([_config(tmp_path, sample_prompts="prompts.txt")])
    reason = {u.key: u.reason for u in result.unsupported}["sample_prompts"]
    assert expected in reason and str(tmp_path / "prompts.txt") in reason
    assert result.config.sampling.prompts == type(result.config.sampling)().prompts


def test_a_folder_named_as_the_prompt_file_is_refused(tmp_path):
    (tmp_path / "prompts").mkdir()
    result = import_kohya([_config(tmp_path, sample_prompts="prompts")])
    assert "is a folder, not a file" in {u.key: u.reason for u in result.unsupported}["sample_prompts"]


def test_a_prompt_file_is_listed_with_its_prompts_and_size_in_the_report(tmp_path):
    text = "# samples\na cat, sitting --w 512 --h 512\n\nan owl, flying --d 3\n"
    (tmp_path / "prompts.txt").write_text(text, "utf-8")
    result = import_kohya([_config(tmp_path, sample_prompts="prompts.txt")])
    assert result.config.sampling.prompts == text
    assert (str(tmp_path / "prompts.txt"), f"sample_prompts: 2 prompts, {len(text)} bytes") in result.sources
    assert f"prompts.txt (sample_prompts: 2 prompts, {len(text)} bytes)" in format_report(result).splitlines()[0]
    assert not [w for w in result.warnings if w.startswith("sample_prompts")]  # a normal prompt file


def test_a_file_that_is_not_a_txt_file_is_read_with_a_warning_naming_it(tmp_path):
    # What a system file such as /etc/passwd looks like: text, but no prompt list.
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\n",
                                     "utf-8")
    result = import_kohya([_config(tmp_path, sample_prompts="passwd")])
    warning = next(w for w in result.warnings if w.startswith("sample_prompts"))
    assert f"read 2 prompts from {tmp_path / 'passwd'}" in warning
    assert "not a .txt file, so check that it really is a list of prompts" in warning


def test_a_prompt_file_without_prompts_is_read_with_a_warning(tmp_path):
    (tmp_path / "prompts.txt").write_text("# nothing yet\n\n", "utf-8")
    result = import_kohya([_config(tmp_path, sample_prompts="prompts.txt")])
    assert any(w.startswith("sample_prompts: read 0 prompts") and w.endswith("it holds no prompts")
               for w in result.warnings)


def test_a_missing_prompt_file_is_reported_as_not_found_here(tmp_path):
    result = import_kohya([_config(tmp_path, sample_prompts="elsewhere.txt")])
    assert {u.key: u.reason for u in result.unsupported}["sample_prompts"] == "the prompt file was not found here"


@needs_fifo
def test_a_dataset_config_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "dataset.toml")
    result = _import_in_child(_config(tmp_path, dataset_config="dataset.toml"))
    reason = result["unsupported"]["dataset_config"]
    assert str(tmp_path / "dataset.toml") in reason and "named pipe (FIFO)" in reason


@needs_dev_zero
def test_a_dataset_config_that_is_dev_zero_is_refused(tmp_path):
    result = _import_in_child(_config(tmp_path, dataset_config="/dev/zero"))
    assert "is a device" in result["unsupported"]["dataset_config"]


@needs_fifo
def test_a_config_file_that_is_a_fifo_is_refused_with_its_name(tmp_path):
    os.mkfifo(tmp_path / "config.toml")
    error = _import_in_child(tmp_path / "config.toml")["error"]
    assert error.startswith(str(tmp_path / "config.toml")) and "named pipe (FIFO)" in error


@needs_dev_zero
def test_dev_zero_given_as_the_config_is_refused():
    error = _import_in_child(Path("/dev/zero"))["error"]
    assert error.startswith("/dev/zero: is a device")
