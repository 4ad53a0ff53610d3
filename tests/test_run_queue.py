"""The training queue: a file that survives restarts, and runs that follow one another."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from core.cli.main import main
from core.config.presets import dumps_preset
from core.studies.queue_runner import run_queue
from core.studies.run_queue import QueueError, RunQueue
from core.studies.sweep import SweepError, parse_vary, read_sweep_record
from core.training.control import Control
from core.training.events import Failed, Finished, ListSink, RunStarted
from tests.engine_fixtures import tiny_config


@pytest.fixture
def base(tmp_path):
    return tiny_config(tmp_path)


def _file(queue):
    return json.loads(queue.path.read_text())


def _named(base, name):
    config = copy.deepcopy(base)
    config.output.output_name = name
    return config


# ---------------------------------------------------------------- the file


def test_items_persist_in_order_and_reload(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    a = queue.add(_named(base, "a"))
    b = queue.add(_named(base, "b"), label="second", description="why b")
    c = queue.add(_named(base, "c"))
    queue.move(c.id, 0)
    queue.remove(a.id)
    again = RunQueue.load(tmp_path / "q.json")
    assert again.load_problem is None
    assert [(i.label, i.status, i.description) for i in again.items] == [("c", "pending", ""),
                                                                          ("second", "pending", "why b")]
    assert again.items[1].id == b.id
    assert again.config_of(again.items[1]).output.output_name == "b"
    assert dumps_preset(again.config_of(again.items[0]), sparse=False) == dumps_preset(_named(base, "c"), sparse=False)


def test_an_item_is_a_snapshot_of_the_config(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    item = queue.add(base)
    base.network.dim = 32
    assert queue.config_of(item).network.dim == 4


def test_move_clamps_to_the_list_and_unknown_ids_are_named(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    ids = [queue.add(_named(base, n)).id for n in "abc"]
    queue.move(ids[0], 99)
    queue.move(ids[2], -5)
    assert [i.label for i in queue.items] == ["c", "b", "a"]
    with pytest.raises(QueueError, match="no queue item 'nope'"):
        queue.remove("nope")
    with pytest.raises(ValueError, match="unknown queue status 'done'"):
        queue.mark(ids[0], "done")


def test_a_running_item_cannot_be_removed_and_clear_keeps_what_has_not_ended(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    items = [queue.add(_named(base, n)) for n in "abcd"]
    queue.mark(items[0].id, "completed", run_dir="/runs/a")
    queue.mark(items[1].id, "failed", message="boom")
    queue.mark(items[2].id, "running")
    with pytest.raises(QueueError, match="'c' is training"):
        queue.remove(items[2].id)
    assert queue.clear_finished() == 2
    assert [(i.label, i.status) for i in RunQueue.load(queue.path).items] == [("c", "running"), ("d", "pending")]


def test_changes_from_another_process_are_not_overwritten(tmp_path, base):
    app = RunQueue.load(tmp_path / "q.json")
    cli = RunQueue.load(tmp_path / "q.json")
    app.add(_named(base, "from-app"))
    cli.add(_named(base, "from-cli"))
    app.add(_named(base, "again-app"))
    assert [i.label for i in RunQueue.load(tmp_path / "q.json").items] == ["from-app", "from-cli", "again-app"]


def _dead_process_stamp():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return {"pid": dead.pid, "host": socket.gethostname(), "started": 0.0}


def _live_other_process_stamp():
    parent = psutil.Process().parent()
    return {"pid": parent.pid, "host": socket.gethostname(), "started": parent.create_time()}


@pytest.mark.parametrize("claim", ["the item's", "the file's runner, as saved before items had their own"])
def test_an_item_left_running_by_a_dead_process_becomes_interrupted(tmp_path, base, claim):
    queue = RunQueue.load(tmp_path / "q.json")
    item = queue.add(base)
    queue.mark(item.id, "running", run_dir=str(tmp_path / "run"))
    document = _file(queue)
    assert document["items"][0]["claimed_by"]["pid"] == document["runner"]["pid"] == os.getpid()
    if claim == "the item's":
        document["items"][0]["claimed_by"] = _dead_process_stamp()
    else:
        del document["items"][0]["claimed_by"]
        document["runner"] = _dead_process_stamp()
    queue.path.write_text(json.dumps(document))
    again = RunQueue.load(queue.path)
    assert (again.items[0].status, again.items[0].run_dir) == ("interrupted", str(tmp_path / "run"))
    # The run folder saved no state: resuming is not what to do.
    assert "--resume" not in again.items[0].message and "cannot be resumed" in again.items[0].message
    saved = _file(again)
    assert saved["items"][0]["status"] == "interrupted" and saved["items"][0]["claimed_by"] is None
    assert saved["runner"] is None


def test_an_item_running_in_a_live_process_stays_running(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    item = queue.add(base)
    queue.add(_named(base, "next"))
    queue.mark(item.id, "running")
    document = _file(queue)
    other = document["items"][0]["claimed_by"] = _live_other_process_stamp()
    queue.path.write_text(json.dumps(document))
    again = RunQueue.load(queue.path)
    assert again.items[0].status == "running"
    assert again.busy_elsewhere()
    with pytest.raises(QueueError, match=f"another LoRA Kiln process \\(pid {other['pid']}, training 'tiny'\\)"):
        run_queue(again, lambda item: ListSink(), lambda item: Control(), trainer_factory=_FakeTrainer)
    with pytest.raises(QueueError, match="another LoRA Kiln process"):
        again.claim_next()  # one queue trains one run at a time: the next item is not taken either
    assert [i.status for i in RunQueue.load(queue.path).items] == ["running", "pending"]


@pytest.mark.parametrize("content, reason", [
    ("{not json", "Expecting property name"),
    ('{"version": 9, "items": []}', "newer LoRA Kiln (queue version 9)"),
    ('{"version": 1, "items": [{"id": "x"}]}', "'label' is missing"),
    ('{"version": 1, "items": [], "sweeps": []}', "'sweeps' is not a JSON object"),
    ('{"version": 1, "items": 3}', "'items' is not a JSON list"),
    ('{"version": 1, "items": [{"id": "x", "label": "", "config_toml": "", "description": "", "sweep_id": null, '
     '"status": "paused", "run_dir": null, "message": "", "added_at": 0}]}', "unknown status 'paused'"),
])
def test_an_unreadable_queue_is_kept_aside_and_the_queue_starts_empty(tmp_path, base, content, reason):
    path = tmp_path / "queue.json"
    path.write_text(content)
    queue = RunQueue.load(path)
    assert queue.items == []
    kept = list(tmp_path.glob("queue.json.broken-*"))
    assert len(kept) == 1 and kept[0].read_text() == content
    assert str(path) in queue.load_problem and str(kept[0]) in queue.load_problem and reason in queue.load_problem
    queue.add(base)
    assert len(RunQueue.load(path).items) == 1 and kept[0].read_text() == content


def test_a_config_that_no_longer_loads_fails_when_run_not_at_load(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    bad = queue.add(_named(base, "bad"))
    good = queue.add(_named(base, "good"))
    document = _file(queue)
    document["items"][0]["config_toml"] = "[network]\ndimm = 4\n"
    queue.path.write_text(json.dumps(document))
    queue = RunQueue.load(queue.path)
    assert queue.load_problem is None and len(queue.items) == 2
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(), trainer_factory=_FakeTrainer.script())
    assert [(i.id, i.status) for i in ran] == [(bad.id, "failed"), (good.id, "completed")]
    assert "queue item 'bad'" in ran[0].message and "network.dimm: unknown key" in ran[0].message


def test_a_sweep_is_queued_whole_or_not_at_all(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    with pytest.raises(SweepError, match="0: network.dim"):
        queue.add_sweep(base, parse_vary("network.dim=2,0"))
    assert queue.items == [] and not queue.path.exists()
    sweep_id, items = queue.add_sweep(base, parse_vary("network.dim=2,8"))
    assert [(i.label, i.sweep_id) for i in items] == [("network.dim=2", sweep_id), ("network.dim=8", sweep_id)]
    assert [queue.config_of(i).output.output_name for i in items] == ["tiny_dim-2", "tiny_dim-8"]
    assert RunQueue.load(queue.path).sweeps[sweep_id] == {"field": "network.dim", "values": ["2", "8"]}


# ---------------------------------------------------------------- running


class _FakeTrainer:
    """Stands in for the engine: makes a run folder, reports it, ends as scripted by LoRA name."""

    outcomes: dict[str, str] = {}
    made: list = []

    def __init__(self, config, sink, control, description=""):
        self.config, self.sink, self.control, self.description = config, sink, control, description
        _FakeTrainer.made.append(self)

    @classmethod
    def script(cls, **outcomes):
        cls.outcomes, cls.made = outcomes, []
        return cls

    def run(self):
        name = self.config.output.output_name
        run_dir = os.path.join(self.config.output.output_dir, name)
        os.makedirs(run_dir, exist_ok=True)
        self.sink.emit(RunStarted(run_dir, name, 3, 1, 3, 3))
        outcome = self.outcomes.get(name, "completed")
        if outcome == "raise":
            raise RuntimeError("engine bug")
        if outcome == "ctrl-c":
            raise KeyboardInterrupt
        if outcome == "sigint":  # as the terminal sends it: the command's handler asks to stop
            os.kill(os.getpid(), signal.SIGINT)
            outcome = "stopped" if self.control.stop_requested else "completed"
        event = (Failed("oom", "out of memory", (), "", None, run_dir) if outcome == "failed"
                 else Finished(outcome, run_dir, None, 3, 1, 1.5))
        self.sink.emit(event)
        return event


def _queue_of(tmp_path, base, *names):
    queue = RunQueue.load(tmp_path / "q.json")
    for name in names:
        queue.add(_named(base, name))
    return queue


def test_claiming_takes_the_first_pending_item_for_this_process_once(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b")
    first = queue.claim_next()
    assert (first.label, first.status) == ("a", "running")
    assert _file(queue)["items"][0]["claimed_by"]["pid"] == os.getpid()
    other = RunQueue.load(queue.path)  # another view of the file, such as the app's
    assert not other.busy_elsewhere()  # the claim is this process's own
    assert other.claim_next().label == "b"
    assert queue.claim_next() is None  # both are taken, whichever object asks
    queue.mark(first.id, "completed")
    assert _file(queue)["items"][0]["claimed_by"] is None


def test_a_lock_held_too_long_is_named_and_nothing_is_changed(tmp_path, base, monkeypatch):
    from filelock import FileLock

    import core.studies.run_queue

    queue = _queue_of(tmp_path, base, "a")
    monkeypatch.setattr(core.studies.run_queue, "LOCK_WAIT_SECONDS", 0.2)
    holder = FileLock(str(tmp_path / "q.json.lock"))  # another process in the middle of a change
    with holder:
        with pytest.raises(QueueError, match=r"q\.json\.lock.*nothing was changed"):
            queue.add(_named(base, "b"))
    assert [i.label for i in RunQueue.load(queue.path).items] == ["a"]
    queue.add(_named(base, "b"))
    assert [i.label for i in RunQueue.load(queue.path).items] == ["a", "b"]


def test_pending_items_run_in_order_each_with_its_own_sink_and_control(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b")
    sinks, controls = {}, {}
    fake = _FakeTrainer.script()
    ran = run_queue(queue, lambda item: sinks.setdefault(item.label, ListSink()),
                    lambda item: controls.setdefault(item.label, Control()), trainer_factory=fake)
    assert [(i.label, i.status, i.message) for i in ran] == [("a", "completed", "3 steps in 2 s"),
                                                              ("b", "completed", "3 steps in 2 s")]
    assert [t.config.output.output_name for t in fake.made] == ["a", "b"]
    assert [t.sink.sinks[1] for t in fake.made] == [sinks["a"], sinks["b"]]
    assert [t.control for t in fake.made] == [controls["a"], controls["b"]]
    assert len(sinks["a"].of(Finished)) == len(sinks["b"].of(Finished)) == 1
    assert [i.run_dir for i in RunQueue.load(queue.path).items] == [str(tmp_path / "runs" / n) for n in "ab"]
    assert _file(queue)["runner"] is None


def test_a_failed_item_is_recorded_and_the_queue_goes_on(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b", "c")
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(),
                    trainer_factory=_FakeTrainer.script(a="failed", b="raise"))
    assert [(i.status, i.message) for i in ran] == [("failed", "out of memory"),
                                                    ("failed", "RuntimeError: engine bug"),
                                                    ("completed", "3 steps in 2 s")]
    assert ran[0].run_dir == str(tmp_path / "runs" / "a")


@pytest.mark.parametrize("reason", ["stopped", "cancelled"])
def test_a_run_stopped_by_the_person_ends_the_queue(tmp_path, base, reason):
    queue = _queue_of(tmp_path, base, "a", "b")
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(),
                    trainer_factory=_FakeTrainer.script(a=reason))
    assert [(i.label, i.status) for i in ran] == [("a", reason)]
    assert [i.status for i in queue.items] == [reason, "pending"]


def test_stop_after_current_is_asked_between_runs(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b", "c")
    answers = iter([False, True])
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(), lambda: next(answers),
                    trainer_factory=_FakeTrainer.script())
    assert [i.label for i in ran] == ["a", "b"] and queue.items[2].status == "pending"


def test_a_runner_ends_when_another_process_takes_the_queue_between_two_runs(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b", "c")

    def another_process_takes_b():  # asked between runs, just when a second runner could claim
        document = _file(queue)
        document["items"][1].update(status="running", claimed_by=_live_other_process_stamp())
        queue.path.write_text(json.dumps(document))
        return False

    fake = _FakeTrainer.script()
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(), another_process_takes_b,
                    trainer_factory=fake)
    assert [(i.label, i.status) for i in ran] == [("a", "completed")]
    assert [t.config.output.output_name for t in fake.made] == ["a"]  # neither b nor c trains beside it
    assert [i.status for i in RunQueue.load(queue.path).items] == ["completed", "running", "pending"]


def test_an_interrupt_mid_run_leaves_the_item_resumable(tmp_path, base):
    queue = _queue_of(tmp_path, base, "a", "b")
    with pytest.raises(KeyboardInterrupt):
        run_queue(queue, lambda item: ListSink(), lambda item: Control(),
                  trainer_factory=_FakeTrainer.script(a="ctrl-c"))
    again = RunQueue.load(queue.path)
    assert [(i.status, i.run_dir) for i in again.items] == [("interrupted", str(tmp_path / "runs" / "a")),
                                                            ("pending", None)]


def test_the_last_run_of_a_queued_sweep_writes_its_record(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    other = queue.add(_named(base, "other"))
    sweep_id, items = queue.add_sweep(base, parse_vary("network.dim=2,8"))
    queue.move(other.id, 1)  # between the two runs of the sweep
    run_queue(queue, lambda item: ListSink(), lambda item: Control(),
              trainer_factory=_FakeTrainer.script(**{"tiny_dim-8": "failed"}))
    path = RunQueue.load(queue.path).sweep_record_path(sweep_id)
    assert path is not None and path.parent == tmp_path / "runs" / "sweeps"
    record = read_sweep_record(path)
    assert record.field == "network.dim" and record.values == ("2", "8")
    assert record.run_dirs == (tmp_path / "runs" / "tiny_dim-2", tmp_path / "runs" / "tiny_dim-8")
    queue.clear_finished()
    assert queue.sweeps == {} and path.is_file()  # the entry goes with its items; the record stays


def test_removing_the_pending_rest_of_a_sweep_ends_it(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    sweep_id, items = queue.add_sweep(base, parse_vary("network.dim=2,8"))
    queue.mark(items[0].id, "completed", run_dir=str(tmp_path / "runs" / "first"))
    assert queue.sweep_record_path(sweep_id) is None
    queue.remove(items[1].id)
    assert read_sweep_record(queue.sweep_record_path(sweep_id)).run_dirs == (tmp_path / "runs" / "first",)


@pytest.mark.slow
def test_a_real_tiny_run_goes_through_the_queue(tmp_path):
    queue = RunQueue.load(tmp_path / "q.json")
    queue.add(tiny_config(tmp_path, steps=2), label="real")
    sink = ListSink()
    ran = run_queue(queue, lambda item: sink, lambda item: Control())
    assert [(i.label, i.status) for i in ran] == [("real", "completed")]
    finished = sink.of(Finished)[0]
    assert finished.steps == 2 and ran[0].run_dir == finished.run_dir
    assert os.path.dirname(finished.run_dir) == str(tmp_path / "runs")
    assert os.path.isfile(finished.lora_path)


# ---------------------------------------------------------------- lorakiln queue


def test_queue_command_adds_lists_moves_removes_and_clears(tmp_path, capsys):
    qfile = str(tmp_path / "q.json")
    out = str(tmp_path / "runs")
    assert main(["queue", "add", "demo", "--queue-file", qfile, "--output-dir", out, "--label", "first"]) == 0
    assert main(["queue", "--queue-file", qfile, "add", "demo", "--set", "network.dim=8", "--output-dir", out]) == 0
    assert main(["queue", "add", "demo", "--vary", "network.dim=2,16", "--queue-file", qfile, "--output-dir", out]) == 0
    queue = RunQueue.load(tmp_path / "q.json")
    assert [i.label for i in queue.items] == ["first", "demo", "network.dim=2", "network.dim=16"]
    assert queue.config_of(queue.items[1]).network.dim == 8
    assert queue.config_of(queue.items[0]).output.output_dir == out
    capsys.readouterr()
    assert main(["queue", "move", queue.items[3].id[:5], "1", "--queue-file", qfile]) == 0
    assert main(["queue", "remove", queue.items[0].id, "--queue-file", qfile]) == 0
    assert main(["queue", "list", "--queue-file", qfile]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == [line for line in lines if line.lstrip()[:2] in ("1.", "2.", "3.")]
    assert [line.split()[3] for line in lines[-3:]] == ["network.dim=16", "demo", "network.dim=2"]
    queue = RunQueue.load(tmp_path / "q.json")
    queue.mark(queue.items[0].id, "completed")
    assert main(["queue", "clear", "--queue-file", qfile]) == 0
    assert [i.label for i in RunQueue.load(tmp_path / "q.json").items] == ["demo", "network.dim=2"]


def test_queue_command_errors_are_clear(tmp_path, capsys):
    qfile = str(tmp_path / "q.json")
    assert main(["queue", "remove", "abc", "--queue-file", qfile]) == 2
    assert "no queue item 'abc' (items: the queue is empty)" in capsys.readouterr().err
    assert main(["queue", "add", "demo", "--set", "network.dim=0", "--queue-file", qfile]) == 2
    assert "network.dim: 0 is below the minimum" in capsys.readouterr().err
    assert main(["queue", "add", "demo", "--set", "dataset.subsets[0].image_dir=/no/such", "--queue-file", qfile]) == 2
    assert "nothing was queued" in capsys.readouterr().err
    assert main(["queue", "run", "--queue-file", qfile]) == 0
    assert "nothing is pending" in capsys.readouterr().out
    (tmp_path / "q.json").write_text("garbage")
    assert main(["queue", "list", "--queue-file", qfile]) == 0
    captured = capsys.readouterr()
    assert "could not be read" in captured.err and "(empty)" in captured.out


@pytest.mark.parametrize("first, code, statuses", [
    ("failed", 1, ["failed", "completed"]),
    ("sigint", 130, ["stopped", "pending"]),
])
def test_queue_command_runs_the_items(tmp_path, capsys, monkeypatch, first, code, statuses):
    from core.training import engine

    monkeypatch.setattr(engine, "Trainer", _FakeTrainer.script(one=first))
    qfile = str(tmp_path / "q.json")
    for name in ("one", "two"):
        assert main(["queue", "add", "demo", "--set", f"output.output_name={name}", "--queue-file", qfile,
                     "--output-dir", str(tmp_path / "runs")]) == 0
    handler_before = signal.getsignal(signal.SIGINT)
    assert main(["queue", "run", "--queue-file", qfile]) == code
    assert [i.status for i in RunQueue.load(tmp_path / "q.json").items] == statuses
    assert signal.getsignal(signal.SIGINT) is handler_before
    printed = capsys.readouterr().out
    assert f"one: {statuses[0]}" in printed


def test_an_interrupted_item_whose_run_saved_a_state_is_advised_to_resume_from_it(tmp_path, base):
    queue = RunQueue.load(tmp_path / "q.json")
    item = queue.add(base)
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "state" / "step-00000003.safetensors").write_bytes(b"")
    queue.mark(item.id, "running", run_dir=str(run))
    document = _file(queue)
    document["items"][0]["claimed_by"] = _dead_process_stamp()
    queue.path.write_text(json.dumps(document))
    message = RunQueue.load(queue.path).items[0].message
    assert f'lorakiln train --resume "{run}"' in message and "step 3" in message


def test_queue_command_fails_an_item_that_no_longer_validates_with_its_field_messages_and_trains_nothing_of_it(
        tmp_path, capsys, monkeypatch):
    import shutil

    from core.training import engine

    fake = _FakeTrainer.script()
    monkeypatch.setattr(engine, "Trainer", fake)
    queue = RunQueue.load(tmp_path / "q.json")
    queue.add(_named(tiny_config(tmp_path / "gone"), "gone"), label="gone")
    queue.add(_named(tiny_config(tmp_path), "fine"), label="fine")
    shutil.rmtree(tmp_path / "gone" / "data")  # its dataset disappeared after queueing
    assert main(["queue", "run", "--queue-file", str(queue.path)]) == 1
    gone, fine = RunQueue.load(queue.path).items
    assert (gone.status, gone.run_dir) == ("failed", None) and "dataset.subsets[0].image_dir" in gone.message
    assert fine.status == "completed" and [t.config.output.output_name for t in fake.made] == ["fine"]
    printed = capsys.readouterr()
    assert f"queue: “gone” cannot start: {gone.message}" in printed.err
    assert f"gone: failed - {gone.message}" in printed.out
