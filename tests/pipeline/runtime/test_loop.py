"""The training loops' guard: skipped steps counted per phase, and a loss that blows up while finite caught
before a checkpoint (``NonFiniteGuard.diverged``), its state carried through a resume."""
import pytest
import torch

from pipeline.runtime.loop import NonFiniteError, NonFiniteGuard

CPU = torch.device("cpu")


def fill(guard: NonFiniteGuard, phase: str, losses: list[float], skipped: bool = False) -> None:
    for step, loss in enumerate(losses):
        guard.record(phase, skipped, step, loss)


def test_a_window_far_above_the_typical_earlier_ones_stops_the_run():
    guard = NonFiniteGuard(5, ("student", "discriminator"), False, ratio=100.0)
    fill(guard, "discriminator", [1.4, 1.2])
    fill(guard, "student", [-3.0, 5.0])  # a loss of either sign: compared by magnitude, at least 1
    guard.diverged(10, CPU)  # the first window: nothing to compare with
    assert guard.history == {"student": [1.0], "discriminator": [pytest.approx(1.3)]}
    fill(guard, "discriminator", [1.0, 1.0])
    fill(guard, "student", [-90.0, -100.0])  # 95: within 100 x max(1, 1.0)
    guard.diverged(20, CPU)
    fill(guard, "discriminator", [1.0])
    fill(guard, "student", [1e4, float("nan")])  # a non-finite loss is a skipped step's, not part of the mean
    with pytest.raises(NonFiniteError, match=r"stopping at step 30: the student loss diverged \(mean 1e\+04 since "
                                             r"the last checkpoint, typically 48 before"):
        guard.diverged(30, CPU)


def test_skipped_steps_and_a_ratio_of_zero_never_stop_it_by_divergence():
    guard = NonFiniteGuard(3, ("train",), False, ratio=0.0)
    fill(guard, "train", [2.0])
    guard.diverged(1, CPU)
    fill(guard, "train", [1e30])
    guard.diverged(2, CPU)
    fill(guard, "train", [float("nan")] * 2, skipped=True)
    assert guard.skipped == {"train": 2} and guard.window == {"train": [0.0, 0]}
    with pytest.raises(NonFiniteError, match="3 consecutive train steps"):
        fill(guard, "train", [float("nan")], skipped=True)


def test_the_windows_resume_with_the_run():
    guard = NonFiniteGuard(5, ("train",), False, ratio=10.0)
    fill(guard, "train", [3.0])
    guard.diverged(1, CPU)
    fill(guard, "train", [4.0])
    resumed = NonFiniteGuard(5, ("train",), False, ratio=10.0)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.history == {"train": [3.0]} and resumed.window == {"train": [4.0, 1]}
    older = {"skipped": {"train": 1}, "in_a_row": {"train": 0}}  # a checkpoint written before the windows
    resumed.load_state_dict(older)
    assert resumed.skipped == {"train": 1}
