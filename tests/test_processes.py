"""Telling a live training process from a gone one, from the stamp a summary or queue holds.
The stamp is read from a file, so whatever it holds gives an answer, never an exception."""

import math
import socket
import subprocess
import sys

import pytest

from core.system.processes import ALIVE, GONE, UNKNOWN, process_state, this_process

HOST = socket.gethostname()


def test_this_process_is_alive():
    assert process_state(this_process()) == ALIVE


def test_an_ended_process_is_gone():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert process_state({"pid": ended.pid, "host": HOST, "started": 0.0}) == GONE


def test_a_pid_reused_by_another_process_is_gone():
    mine = this_process()
    assert process_state({**mine, "started": mine["started"] - 3600}) == GONE


@pytest.mark.parametrize("pid", [-1, 0, -(2**63), 2**32, 2**70, 10**400, True, False, 1.5, 12.0, math.nan,
                                 math.inf, "123", "", None, [1], {"pid": 1}],
                         ids=lambda value: repr(value)[:24])
def test_a_pid_that_is_not_a_positive_whole_number_is_unknown(pid):
    assert process_state({"pid": pid, "host": HOST, "started": 0.0}) == UNKNOWN


@pytest.mark.parametrize("started", [math.nan, math.inf, -math.inf, 10**400, "0", None, True, [], {}],
                         ids=lambda value: repr(value)[:24])
def test_a_start_time_that_is_not_a_finite_number_is_unknown(started):
    assert process_state({"pid": this_process()["pid"], "host": HOST, "started": started}) == UNKNOWN


@pytest.mark.parametrize("stamp", [None, 5, "stamp", [], {}, {"pid": 1}, {"host": HOST},
                                   {"host": HOST, "started": 0.0}, {"pid": 1, "host": 7, "started": 0.0},
                                   {"pid": 1, "host": "another-machine", "started": 0.0}],
                         ids=lambda value: repr(value)[:24])
def test_a_missing_malformed_or_foreign_stamp_is_unknown(stamp):
    assert process_state(stamp) == UNKNOWN
