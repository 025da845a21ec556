"""Processes by pid, told apart from later processes given the same pid.

A pid names a process only while it runs: once it exits, the kernel gives the number to another
one, and in a container, where every incarnation of a pod starts from pid 1, small pids recur
at once. Whoever records a pid to find its process again (a lock's holder, a run's cluster)
records the process's start time with it (:func:`process_started`) and asks
:func:`same_process`.
"""

from __future__ import annotations

import os


def is_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a child of this process that exited is reaped)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_started(pid: int) -> float | None:
    """Start time of process ``pid`` (s since the epoch, rounded to psutil's 10 ms clock
    ticks); None when there is no such process."""
    import psutil

    try:
        return round(psutil.Process(pid).create_time(), 2)
    except psutil.Error:
        return None


def same_process(pid: int, started: float | None) -> bool:
    """True while the process recorded as ``pid``, started at ``started``, runs on this machine:
    a process with that pid is alive and started then (``started`` None, as recorded before
    start times were: the pid alone decides)."""
    if not is_alive(pid):
        return False
    return started is None or process_started(pid) == started
