"""Fuzzing the run folders the runs library, `lorakiln compare` and the Runs tab read.

A run folder may have been edited, half copied or damaged: its summary.json may hold any
JSON (wrong types, -1 pids, huge numbers, NaN, paths longer than a file name may be, NUL
bytes) or no JSON at all, its metrics.jsonl any bytes. Whatever it holds, the listing
never raises, the damaged run is listed with a readable record, and a good run beside it
is listed exactly as when it is alone. Example counts keep this file to seconds on two
busy cores; the ``slow``-marked variant runs many more.
"""

import contextlib
import io
import json
import math
import socket
import string
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cli.main import main
from core.studies.compare import comparison_table, export_comparison, table_to_csv, table_to_markdown, table_to_text
from core.studies.run_index import MEMORY_KINDS, discover_runs, is_run_dir, load_run, load_series
from core.training.run_folder import RunSummary
from tests.test_fuzz_parsers import FAST, LONG, TRICKY_TEXT, fuzz, values
from tests.test_run_index import make_config, step_record, write_run

# The text load_run gives when a case got past every reader (its last resort); no fuzzed
# folder may reach it.
LAST_RESORT = "this run folder could not be read"
HOST = socket.gethostname()

LONG_NAMES = ["x" * 256, "/loras/" + "y" * 300 + ".safetensors", "a/" * 3000, "nul\x00byte.safetensors",
              "../" * 50 + "cat.safetensors", "cat.safetensors", "", "/", "."]
numbers = st.one_of(st.integers(), st.sampled_from([-1, 0, 2**31, 2**63, 2**64, -(2**63), 10**30, 10**400]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324]))
runners = st.one_of(
    values, st.none(),
    st.fixed_dictionaries({"pid": st.one_of(numbers, values), "host": st.sampled_from([HOST, "elsewhere", 7]),
                           "started": st.one_of(numbers, values)}),
)
summary_values = {
    "status": st.one_of(st.sampled_from(["completed", "running", "stopped", "failed", "cancelled", "", "RUNNING"]),
                        values),
    "lora_path": st.one_of(st.sampled_from(LONG_NAMES), values),
    "runner": runners,
    "memory_kind": st.one_of(st.sampled_from(["cuda", "rss", "mps"]), values),
    "vram_forecast": st.one_of(
        values, st.none(),
        st.fixed_dictionaries({}, optional={"peak": st.one_of(numbers, values), "driver": st.one_of(numbers, values),
                                            "error": st.one_of(st.sampled_from(TRICKY_TEXT), values)})),
}
SUMMARY_FIELDS = list(RunSummary.__dataclass_fields__)


@st.composite
def summaries(draw) -> bytes | None:
    """The bytes of a summary.json: usually a JSON object with the engine's keys, sometimes
    anything else; None for no file."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return None
    if shape == 1:
        return draw(st.binary(max_size=200))
    if shape == 2:
        return json.dumps(draw(values)).encode()
    doc = {}
    for key in draw(st.lists(st.sampled_from(SUMMARY_FIELDS + ["extra"]), max_size=len(SUMMARY_FIELDS),
                             unique=True)):
        doc[key] = draw(summary_values.get(key, st.one_of(numbers, values)))
    try:
        return json.dumps(doc).encode()  # NaN and infinities as JSON's NaN/Infinity, as Python reads them
    except ValueError:  # a value JSON cannot hold (an int too long for str())
        return b"{}"


step_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["step", "epoch", "sample", "skipped", "checkpoint"]),
     "step": st.one_of(st.integers(0, 50), numbers, values)},
    optional={"epoch": st.one_of(st.integers(0, 5), numbers, values), "loss": st.one_of(numbers, values),
              "avg_loss": numbers, "mean_loss": st.one_of(numbers, values),
              "lr": st.one_of(st.dictionaries(st.sampled_from(["unet", "text_encoder"]), st.one_of(numbers, values)),
                              values),
              "dlr": values, "memory_reserved_mb": st.one_of(numbers, values), "elapsed_s": numbers,
              "memory_peak_mb": numbers, "memory_kind": st.one_of(st.sampled_from(["cuda", "rss"]), values),
              "prompt": st.one_of(st.text(max_size=8), st.sampled_from(TRICKY_TEXT))})


def _line(record: dict) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
    except ValueError:
        return b"{}\n"


@st.composite
def metrics_files(draw) -> bytes:
    """Lines of records, of any JSON and of any bytes, in any order; maybe cut anywhere."""
    parts = draw(st.lists(st.one_of(step_like.map(_line), values.map(lambda v: _line({"v": v})[5:-2] + b"\n"),
                                    st.binary(max_size=40), st.just(b"\xff\xfe\n"), st.just(b"\n")),
                          max_size=12))
    data = b"".join(parts)
    if data and draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]  # torn anywhere, inside a character too
    return data


@st.composite
def damaged_runs(draw) -> dict:
    return {"summary": draw(summaries()), "metrics": draw(metrics_files()),
            "plan": draw(st.one_of(st.none(), st.binary(max_size=30),
                                   st.dictionaries(st.sampled_from(["buckets", "images", "batches_per_epoch",
                                                                    "epochs", "max_train_steps"]),
                                                   st.one_of(numbers, values)).map(lambda d: _line(d)))),
            "config": draw(st.sampled_from(["good", "missing", "garbage"])),
            "state": draw(st.sampled_from([None, "step-00000002.pt", "step-00000002.safetensors", "step-x.pt"])),
            "name": draw(st.text(string.ascii_letters + "-_ ", min_size=1, max_size=20))}


def _write_damaged(root: Path, case: dict) -> Path:
    run = write_run(root, "20240101-000000-" + case["name"].strip("- ") + "-odd", make_config("odd"),
                    started=1_600_000_000.0)
    for name, data in (("summary.json", case["summary"]), ("plan.json", case["plan"])):
        (run / name).unlink()
        if data is not None:
            (run / name).write_bytes(data)
    (run / "metrics.jsonl").write_bytes(case["metrics"])
    if case["config"] == "missing":
        (run / "config.toml").unlink()
    elif case["config"] == "garbage":
        (run / "config.toml").write_bytes(b"[network\n\xff")
    if case["state"]:
        (run / "state").mkdir()
        (run / "state" / case["state"]).write_bytes(b"")
    return run


def _check_listing(case: dict, *, export: bool = False) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        good = write_run(root, "20240102-000000-good", make_config("good", 768), started=1_700_000_000.0)
        alone = load_run(good)
        listed = is_run_dir(_write_damaged(root, case))  # not when it has neither summary nor config

        records = discover_runs([root])
        by_folder = {r.folder: r for r in records}
        assert len(records) == 1 + listed and by_folder[good.name] == alone  # listed exactly as when alone
        odd = next((r for r in records if r.folder != good.name), None)
        if odd is None:
            return
        assert LAST_RESORT not in (odd.problem or "")
        assert isinstance(odd.status, str) and odd.memory_kind in MEMORY_KINDS
        for count in (odd.steps, odd.total_steps, odd.epochs, odd.total_epochs, odd.skipped_steps):
            assert isinstance(count, int) and 0 <= count < 2**63
        for number in (odd.wall_seconds, odd.peak_memory_mb, odd.final_loss, odd.last_epoch_loss,
                       odd.forecast_mb, odd.forecast_driver_mb):
            assert number is None or math.isfinite(number)
        assert odd.forecast_error is None or (isinstance(odd.forecast_error, str) and "\n" not in odd.forecast_error)
        assert odd.started_at is None or time.localtime(odd.started_at)
        if "--resume" in (odd.problem or ""):
            assert case["state"] in ("step-00000002.pt", "step-00000002.safetensors")

        series = load_series(odd.path)
        assert series.step.size == series.loss.size and (series.step >= 0).all()
        table = comparison_table(records)
        for render in (table_to_text, table_to_csv, table_to_markdown):
            render(table)
        from gui.run_list import row_cells  # the Runs tab's row: dates and numbers formatted

        from gui.run_list import forecast_tip

        for record in records:
            row_cells(record)
            forecast_tip(record)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["compare", str(root), "--json"]) == 0
        assert len(json.loads(out.getvalue())["rows"]) == len(records)
        if export:
            export_comparison(records, root / "study")
            assert (root / "study" / "comparison.md").is_file()


@fuzz(FAST)
@given(damaged_runs())
def test_a_damaged_run_never_takes_the_listing_down(case):
    _check_listing(case)


@fuzz(12)
@given(damaged_runs())
def test_a_damaged_run_is_exported_with_the_others(case):
    _check_listing(case, export=True)


@fuzz(FAST)
@given(st.binary(max_size=300))
def test_any_bytes_as_metrics_give_curves_and_a_count(data):
    with tempfile.TemporaryDirectory() as folder:
        run = write_run(Path(folder), "r", metrics=[])
        (run / "metrics.jsonl").write_bytes(json.dumps(step_record(1)).encode() + b"\n" + data)
        series = load_series(run)
        assert series.step[:1].tolist() == [1]
        assert series.damaged_lines <= data.count(b"\n")


@pytest.mark.slow
@fuzz(LONG)
@given(damaged_runs())
def test_long_fuzz_damaged_runs(case):
    _check_listing(case)
