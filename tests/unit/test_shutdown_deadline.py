"""The exit deadline armed by SIGTERM: the process ends in time whatever the loop does."""

from __future__ import annotations

import threading
import time

from service.main import EXIT_FORCED, arm_exit_deadline


def test_the_deadline_exits_while_the_main_thread_spins() -> None:
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    started = time.monotonic()
    arm_exit_deadline(0.2, exit=fake_exit)
    while not exited.is_set() and time.monotonic() - started < 5:
        sum(range(1000))  # pure-Python spinning, holding the GIL between switches
    assert codes == [EXIT_FORCED]
    assert 0.2 <= time.monotonic() - started < 2


def test_a_stop_in_time_leaves_the_deadline_unused() -> None:
    codes: list[int] = []
    timer = arm_exit_deadline(0.5, exit=codes.append)
    timer.cancel()  # what a process exiting first amounts to (the timer is a daemon)
    time.sleep(0.7)
    assert codes == [] and timer.daemon
