"""The learning-rate schedules follow transformers' (and so sd-scripts') formulas, step by step."""

import math

import pytest
import torch

from core.config.schema import ScheduleParams, Scheduler
from core.training.optim import build_scheduler

TOTAL, WARMUP, BASE_LR = 20, 4, 1e-3
POLYNOMIAL_END_LR = 1e-7  # the polynomial schedule's lr_end (an absolute rate), as transformers defaults it


def _rates(schedule: ScheduleParams) -> list[float]:
    """The learning rate of steps 0 .. TOTAL (the last one past the end of training)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=BASE_LR)
    scheduler = build_scheduler(optimizer, schedule, TOTAL)
    rates = []
    for _ in range(TOTAL + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _polynomial(step: int, power: float) -> float:
    if step < WARMUP:
        return BASE_LR * step / WARMUP
    if step >= TOTAL:
        return POLYNOMIAL_END_LR
    remaining = 1 - (step - WARMUP) / (TOTAL - WARMUP)
    return (BASE_LR - POLYNOMIAL_END_LR) * remaining ** power + POLYNOMIAL_END_LR


def _cosine_with_restarts(step: int, cycles: int) -> float:
    if step < WARMUP:
        return BASE_LR * step / WARMUP
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    if progress >= 1:
        return 0.0
    return BASE_LR * 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0)))


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_polynomial_warms_up_then_decays_by_the_power(power):
    rates = _rates(ScheduleParams(scheduler=Scheduler.POLYNOMIAL, warmup_steps=WARMUP, power=power))
    assert rates == pytest.approx([_polynomial(step, power) for step in range(TOTAL + 1)], rel=1e-6, abs=1e-12)
    assert rates[0] == 0 and rates[WARMUP] == pytest.approx(BASE_LR) and rates[TOTAL] == pytest.approx(1e-7)
    midway = (WARMUP + TOTAL) // 2
    assert rates[midway] == pytest.approx(BASE_LR * 0.5 ** power, rel=1e-3)


@pytest.mark.parametrize("cycles", [1, 3])
def test_cosine_with_restarts_jumps_back_up_each_cycle(cycles):
    rates = _rates(ScheduleParams(scheduler=Scheduler.COSINE_WITH_RESTARTS, warmup_steps=WARMUP,
                                  num_cycles=cycles))
    expected = [_cosine_with_restarts(step, cycles) for step in range(TOTAL + 1)]
    assert rates == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert rates[0] == 0 and rates[WARMUP] == pytest.approx(BASE_LR) and rates[TOTAL] == 0
    decay = rates[WARMUP:TOTAL]
    restarts = [i for i in range(1, len(decay)) if decay[i] > decay[i - 1]]
    assert len(restarts) == cycles - 1  # a restart is a rise back to the base rate's cosine


def test_warmup_ratio_sets_the_warmup_of_the_shaped_schedules():
    rates = _rates(ScheduleParams(scheduler=Scheduler.POLYNOMIAL, warmup_ratio=0.2, power=2.0))
    assert rates == pytest.approx([_polynomial(step, 2.0) for step in range(TOTAL + 1)], rel=1e-6, abs=1e-12)
