"""Damaged metrics files: a line cut inside a UTF-8 character, a flipped byte, a line that
is not a JSON object. Readers skip such a line and count it; the other records are read;
trimming for a resume keeps every good line and the damaged ones' neighbours."""

import json
from pathlib import Path

from core.training.run_folder import DamagedLines, MetricsWriter, read_metrics, trim_metrics


def line(step: int, **extra) -> bytes:
    record = {"type": "step", "step": step, "loss": 1.0 / step, **extra}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def torn_inside_a_character(step: int) -> bytes:
    """The last line of a killed run, cut between the bytes of a non-ASCII character."""
    whole = line(step, prompt="画像 of a cat")
    cut = whole.index("画".encode("utf-8")) + 1
    return whole[:cut]


def damaged_file(tmp_path: Path) -> Path:
    """Steps 1-6 with three damaged lines between them and a torn multi-byte tail (step 7)."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + line(2, prompt="ñandú")
                     + b'{"type": "step", "step": 99, "prompt": "bad \xff byte"}\n'  # line 3: not UTF-8
                     + line(3) + b'{"type": "step", "st\n'  # line 5: not JSON
                     + line(4) + b"[1, 2, 3]\n"  # line 7: JSON, not an object
                     + line(5) + b"\n"  # a blank line is no damage
                     + line(6) + torn_inside_a_character(7))
    return path


def test_a_torn_multibyte_last_line_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + line(2) + torn_inside_a_character(3))
    damaged = DamagedLines()
    assert [r["step"] for r in read_metrics(path, damaged)] == [1, 2]
    assert damaged.count == 0 and damaged.describe() is None  # a torn tail is expected after a kill


def test_damaged_lines_are_skipped_counted_and_located(tmp_path):
    damaged = DamagedLines()
    records = list(read_metrics(damaged_file(tmp_path), damaged))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[1]["prompt"] == "ñandú"
    assert (damaged.count, damaged.first_line) == (3, 3)
    assert damaged.describe() == ("metrics.jsonl: 3 damaged lines were skipped (the first is line 3); "
                                  "the other records are shown")


def test_reading_without_a_counter_still_skips(tmp_path):
    assert [r["step"] for r in read_metrics(damaged_file(tmp_path))] == [1, 2, 3, 4, 5, 6]


def test_trim_keeps_good_and_damaged_lines_up_to_the_state_byte_for_byte(tmp_path):
    path = damaged_file(tmp_path)
    before = path.read_bytes().split(b"\n")
    damaged = DamagedLines()
    assert trim_metrics(path, last_step=4, damaged=damaged) == 2  # steps 5 and 6
    after = path.read_bytes()
    # Lines 1-7 as they were (the damaged ones included, their neighbours intact), the
    # blank line kept, steps 5 and 6 gone, the torn tail gone.
    assert after == b"\n".join(before[:7] + [before[8]]) + b"\n"
    assert after.endswith(b"\n") and damaged.count == 3
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_a_writer_resuming_after_a_trim_appends_readable_records(tmp_path):
    path = damaged_file(tmp_path)
    trim_metrics(path, last_step=4)
    writer = MetricsWriter(path)
    writer.write({"type": "step", "step": 5, "loss": 0.2, "prompt": "画像"})
    writer.close()
    damaged = DamagedLines()
    assert [r["step"] for r in read_metrics(path, damaged)] == [1, 2, 3, 4, 5]
    assert damaged.count == 3


def test_a_writer_reopening_a_file_with_a_torn_multibyte_tail_cuts_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + torn_inside_a_character(2))
    writer = MetricsWriter(path)
    writer.write({"type": "step", "step": 2, "loss": 0.5})
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_trim_of_a_missing_file_does_nothing(tmp_path):
    assert trim_metrics(tmp_path / "metrics.jsonl", 3) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_step_that_is_not_a_whole_number_is_kept_by_trim(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "start"}, {"type": "step", "step": True}, {"type": "step", "step": "9"},
               {"type": "step", "step": 9}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert trim_metrics(path, 3) == 1
    assert list(read_metrics(path)) == records[:3]
