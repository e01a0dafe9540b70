"""The preemption watch on its own: signals recorded, handlers restored, DataLoader workers immune."""
import os
import signal

import pytest
import torch

from pipeline.runtime.preemption import SIGNALS, Preempted, PreemptionWatch, ignore_in_workers


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_signal_is_recorded_and_the_previous_handler_comes_back(signum):
    before = signal.getsignal(signum)
    with PreemptionWatch(torch.device("cpu")) as watch:
        assert not watch.agreed()
        os.kill(os.getpid(), signum)
        assert watch.received == signal.Signals(signum).name and watch.agreed()
    assert signal.getsignal(signum) is before
    assert "stopped after step 7" in str(Preempted(7, watch.received))


def test_workers_ignore_the_signals():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        ignore_in_workers(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
