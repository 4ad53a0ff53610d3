"""The queue file under real concurrent processes (the app and `lorakiln queue` share it): adds
made at the same moment are all kept, and two runners never train the same item.

Each test starts its processes, waits until every one is ready, then releases them together,
so the changes really overlap; nothing here depends on how long a step takes."""

import subprocess
import sys
import time
from pathlib import Path

from core.config.schema import TrainConfig
from core.studies.run_queue import RunQueue
from tests.engine_fixtures import tiny_config

ROOT = Path(__file__).resolve().parent.parent
# The module the processes import the queue from (a check against an older copy swaps it).
QUEUE_MODULE = "core.studies.run_queue"
START_TIMEOUT_S = 120  # generous: eight interpreters starting on a loaded two-core machine
RUN_TIMEOUT_S = 120

_WAIT_FOR_GO = """
(gate / f"ready-{who}").touch()
while not (gate / "go").exists():
    time.sleep(0.001)
"""

# argv: queue file, gate folder, this process's name, how many items to add.
ADDER = """
import sys, time
from pathlib import Path
from {module} import RunQueue
from core.config.schema import TrainConfig

queue_file, gate, who, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
queue = RunQueue.load(queue_file)  # loaded before the others add, as the app's queue is
config = TrainConfig()
{wait}
for n in range(count):
    queue.add(config, label=f"{{who}}-{{n}}")
"""

# argv: gate folder, this process's name, then `lorakiln` arguments.
LORAKILN = """
import importlib, sys, time
from pathlib import Path

sys.modules["core.studies.run_queue"] = importlib.import_module("{module}")
from core.cli.main import main

gate, who = Path(sys.argv[1]), sys.argv[2]
{wait}
sys.exit(main(sys.argv[3:]))
"""

# argv: queue file, gate folder, this process's name.
RUNNER = """
import importlib, sys, time
from pathlib import Path

sys.modules["core.studies.run_queue"] = importlib.import_module("{module}")
from {module} import QueueError, RunQueue
from core.studies.queue_runner import run_queue
from core.training.control import Control
from core.training.events import Finished, ListSink

queue_file, gate, who = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


class MarkerTrainer:
    '''Stands in for the engine: leaves a marker naming the item and this runner, and takes a
    moment, as a run does, so the other runner has the chance to take the same item.'''

    def __init__(self, config, sink, control, description=""):
        self.name = config.output.output_name

    def run(self):
        (gate / f"ran-{{self.name}}-by-{{who}}").touch()
        time.sleep(0.05)
        return Finished("completed", "", None, 1, 1, 0.05)


queue = RunQueue.load(queue_file)
{wait}
try:
    ran = run_queue(queue, lambda item: ListSink(), lambda item: Control(), trainer_factory=MarkerTrainer)
    print(f"{{who}} ran {{len(ran)}}")
except QueueError as err:  # the other runner had the queue before this one took anything
    print(f"{{who}} refused: {{err}}")
"""


def _script(template):
    return template.format(module=QUEUE_MODULE, wait=_WAIT_FOR_GO)


def _together(gate, commands):
    """Start the processes, let them go at once when all are ready; returns their outputs."""
    gate.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", *command], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for command in commands]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(list(gate.glob("ready-*"))) < len(processes):
            failed = [p for p in processes if p.poll() is not None]
            assert not failed, f"a process ended before it was ready:\n{failed[0].communicate()[0]}"
            assert time.monotonic() < deadline, f"the processes were not ready within {START_TIMEOUT_S} s"
            time.sleep(0.01)
        (gate / "go").touch()
        outputs = [p.communicate(timeout=RUN_TIMEOUT_S)[0] for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    return outputs


def test_eight_processes_adding_at_once_keep_every_item(tmp_path):
    queue_file, each = tmp_path / "queue.json", 4
    script = _script(ADDER)
    _together(tmp_path / "gate", [[script, str(queue_file), str(tmp_path / "gate"), f"p{n}", str(each)]
                                  for n in range(8)])
    queue = RunQueue.load(queue_file)
    assert queue.load_problem is None
    assert sorted(item.label for item in queue.items) == sorted(f"p{p}-{n}" for p in range(8) for n in range(each))
    assert len({item.id for item in queue.items}) == 8 * each
    for p in range(8):  # each process's items in the order it added them
        assert [item.label for item in queue.items if item.label.startswith(f"p{p}-")] == [f"p{p}-{n}"
                                                                                           for n in range(each)]


def test_eight_lorakiln_queue_add_at_once_keep_every_item(tmp_path):
    queue_file, gate = tmp_path / "queue.json", tmp_path / "gate"
    script = _script(LORAKILN)
    outputs = _together(gate, [[script, str(gate), f"p{n}", "queue", "add", "demo", "--label", f"p{n}",
                                "--queue-file", str(queue_file), "--output-dir", str(tmp_path / "runs")]
                               for n in range(8)])
    assert all("queued" in output for output in outputs), outputs
    assert sorted(item.label for item in RunQueue.load(queue_file).items) == [f"p{n}" for n in range(8)]


def test_two_runners_at_once_train_every_item_exactly_once(tmp_path):
    queue_file, gate = tmp_path / "queue.json", tmp_path / "gate"
    queue = RunQueue.load(queue_file)
    names = [f"item{n}" for n in range(6)]
    config = tiny_config(tmp_path)  # one that validates: the runner checks it before the stand-in trainer runs
    for name in names:
        config.output.output_name = name
        queue.add(config)
    script = _script(RUNNER)
    outputs = _together(gate, [[script, str(queue_file), str(gate), who] for who in ("r1", "r2")])
    ran = sorted(path.name for path in gate.glob("ran-*"))
    assert [name.split("-by-")[0] for name in ran] == [f"ran-{name}" for name in names], (ran, outputs)
    saved = RunQueue.load(queue_file).items
    assert [(item.label, item.status, item.claimed_by) for item in saved] == [(name, "completed", None)
                                                                              for name in names]
