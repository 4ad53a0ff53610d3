"""Batch, step and epoch counts as sd-scripts trains them (kohya-behaviour.md §3)."""

from __future__ import annotations

import pytest

from core.data.batching import (
    PlannedImage,
    StepPlan,
    batches_per_epoch,
    bucket_counts,
    epoch_batches,
    plan_steps,
    register_regularisation,
)

# --- regularisation registration ----------------------------------------------------------


def test_reg_images_are_topped_up_round_robin_until_they_match_the_training_images() -> None:
    # Pass 1: 1,1,1 (n=3); pass 2: 2,2,2 (n=6); pass 3: 3,3,3 (n=9); pass 4: a -> 4 (n=10), stop.
    reg = [("a", 1), ("b", 1), ("c", 1)]
    assert register_regularisation(10, reg) == [("a", 4), ("b", 3), ("c", 3)]


def test_surplus_reg_images_are_never_registered() -> None:
    reg = [(k, 1) for k in "abcde"]
    assert register_regularisation(2, reg) == [("a", 1), ("b", 1)]


def test_first_pass_uses_each_reg_images_own_repeats_and_may_overshoot() -> None:
    assert register_regularisation(5, [("a", 3), ("b", 3)]) == [("a", 3), ("b", 3)]
    assert register_regularisation(3, [("a", 5), ("b", 1)]) == [("a", 5)]


def test_later_passes_add_one_repeat_at_a_time() -> None:
    # Pass 1: 2,2 (n=4); pass 2: 3,3 (n=6); pass 3: 4,4 (n=8); pass 4: a -> 5 (n=9), stop.
    assert register_regularisation(9, [("a", 2), ("b", 2)]) == [("a", 5), ("b", 4)]


def test_no_training_images_or_no_reg_images_register_nothing() -> None:
    assert register_regularisation(0, [("a", 1)]) == []
    assert register_regularisation(10, []) == []


# --- bucket counts and batches ------------------------------------------------------------

def test_bucket_counts_count_each_repeat() -> None:
    images = [
        PlannedImage("a.png", (512, 512), 3, False),
        PlannedImage("b.png", (512, 512), 2, False),
        PlannedImage("r.png", (640, 384), 4, True),
        PlannedImage("z.png", (640, 384), 0, False),
    ]
    assert bucket_counts(images) == {(512, 512): 5, (640, 384): 4}


def test_negative_repeats_are_rejected() -> None:
    with pytest.raises(ValueError, match="repeats"):
        bucket_counts([PlannedImage("a.png", (512, 512), -1, False)])


def test_each_bucket_rounds_up_on_its_own() -> None:
    counts = {(512, 512): 70, (576, 448): 50, (448, 576): 30, (640, 384): 20}
    # 18 + 13 + 8 + 5, not ceil(170 / 4) = 43.
    assert batches_per_epoch(counts, 4) == 44


def test_batch_size_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch size"):
        batches_per_epoch({(512, 512): 4}, 0)


# --- steps and epochs ---------------------------------------------------------------------

def test_epochs_fix_the_step_count() -> None:
    assert plan_steps(44, epochs=10) == StepPlan(44, 44, 10, 440, False)


def test_epochs_with_grad_accum_and_two_processes() -> None:
    # ceil(44 / (2 * 2)) = 11 steps an epoch; ceil(44 / (2 * 3)) = 8.
    assert plan_steps(44, epochs=10, grad_accum=2, num_processes=2) == StepPlan(44, 11, 10, 110, False)
    assert plan_steps(44, epochs=10, grad_accum=3, num_processes=2).max_train_steps == 80


def test_max_steps_fix_the_epoch_count_and_may_stop_mid_epoch() -> None:
    # 100 steps at 44 an epoch: ceil(100 / 44) = 3 epochs, the third cut after 12 steps.
    assert plan_steps(44, max_train_steps=100) == StepPlan(44, 44, 3, 100, True)


def test_max_steps_that_are_whole_epochs_do_not_stop_mid_epoch() -> None:
    assert plan_steps(44, max_train_steps=88) == StepPlan(44, 44, 2, 88, False)


def test_max_steps_with_grad_accum_and_two_processes() -> None:
    # 11 steps an epoch: ceil(100 / 11) = 10 epochs, the tenth cut after 1 step.
    assert plan_steps(44, max_train_steps=100, grad_accum=2, num_processes=2) == StepPlan(
        44, 11, 10, 100, True)


def test_exactly_one_of_epochs_and_max_steps_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        plan_steps(44)
    with pytest.raises(ValueError, match="exactly one"):
        plan_steps(44, epochs=1, max_train_steps=10)


def test_no_batches_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no images"):
        plan_steps(0, epochs=1)


# --- epoch order --------------------------------------------------------------------------

MEMBERS = {
    (512, 512): [f"sq{i}" for i in range(10)],
    (640, 384): [f"wide{i}" for i in range(7)] + ["wide0"],  # a repeated image appears twice
    (384, 640): [f"tall{i}" for i in range(3)],
}
BUCKET_OF = {key: bucket for bucket, keys in MEMBERS.items() for key in keys}


def test_same_seed_and_epoch_give_the_same_batches() -> None:
    assert epoch_batches(MEMBERS, 4, seed=42, epoch=3) == epoch_batches(MEMBERS, 4, seed=42, epoch=3)


def test_a_different_epoch_gives_a_different_order() -> None:
    assert epoch_batches(MEMBERS, 4, seed=42, epoch=1) != epoch_batches(MEMBERS, 4, seed=42, epoch=2)


def test_batches_never_mix_buckets() -> None:
    for bucket, keys in epoch_batches(MEMBERS, 4, seed=0, epoch=0):
        assert all(BUCKET_OF[k] == bucket for k in keys)


def test_every_entry_appears_once_per_repeat_in_batches_of_the_planned_count() -> None:
    batches = epoch_batches(MEMBERS, 4, seed=7, epoch=0)
    assert len(batches) == batches_per_epoch({b: len(m) for b, m in MEMBERS.items()}, 4)
    assert all(1 <= len(keys) <= 4 for _, keys in batches)
    for bucket, members in MEMBERS.items():
        drawn = [k for b, keys in batches if b == bucket for k in keys]
        assert sorted(drawn) == sorted(members)


def test_epoch_batches_leave_the_input_untouched() -> None:
    members = {(512, 512): ["a", "b", "c"]}
    epoch_batches(members, 2, seed=1, epoch=0)
    assert members == {(512, 512): ["a", "b", "c"]}
