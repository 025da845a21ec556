"""The run view's answers are shared by the viewers of a run (one computation at a time, the
last answer given again while young) and a failure is not kept."""

from __future__ import annotations

import threading

import pytest

from pipelines.web.runs import RunAnswer, RunViews


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_viewers_asking_during_a_computation_wait_for_it_and_share_its_answer():
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def compute(run_id: str, settled: dict) -> RunAnswer:
        calls.append(run_id)
        started.set()
        release.wait(10)
        return RunAnswer({"run": run_id, "n": len(calls)}, {})

    views = RunViews(compute)
    answers: list[dict] = []
    first = threading.Thread(target=lambda: answers.append(views.get("r1")))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=lambda: answers.append(views.get("r1"))) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert calls == ["r1"] and answers == [{"run": "r1", "n": 1}] * 4


def test_an_answer_is_given_again_while_younger_than_it_took_and_the_minimum():
    clock = Clock()
    calls: list[str] = []

    def compute(run_id: str, settled: dict) -> RunAnswer:
        calls.append(run_id)
        clock.now += 8.0 if run_id == "slow" else 0.5  # what the computation takes
        return RunAnswer({"run": run_id, "n": len(calls)}, {})

    views = RunViews(compute, min_age_s=5.0, clock=clock)
    assert views.get("fast") == {"run": "fast", "n": 1}
    clock.now += 4.9
    assert views.get("fast")["n"] == 1  # younger than the minimum
    clock.now += 0.2
    assert views.get("fast")["n"] == 2  # computed again
    assert views.get("slow")["n"] == 3
    clock.now += 7.9
    assert views.get("slow")["n"] == 3  # younger than the 8 s it took
    clock.now += 0.2
    assert views.get("slow")["n"] == 4
    assert calls == ["fast", "fast", "slow", "slow"]


def test_a_failed_computation_is_not_kept():
    outcomes: list[Exception | dict] = [OSError("store unreachable"), {"run": "r1"}]

    def compute(run_id: str, settled: dict) -> RunAnswer:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return RunAnswer(outcome, {})

    views = RunViews(compute)
    with pytest.raises(OSError, match="unreachable"):
        views.get("r1")
    assert views.get("r1") == {"run": "r1"}


def test_an_answer_reads_again_only_the_tiles_with_work_left_and_all_of_them_at_times():
    """Each answer is given the tiles the last one found finished; the first answer, and the
    first after ``full_read_s``, are given none (every tile read again)."""
    clock = Clock()
    given: list[set[str]] = []
    finished = iter([{"a"}, {"a", "b"}, {"a", "b"}, {"b"}])

    def compute(run_id: str, settled: dict) -> RunAnswer:
        given.append(set(settled))
        clock.now += 1.0
        return RunAnswer({"run": run_id}, dict.fromkeys(next(finished), "tile status"))

    views = RunViews(compute, min_age_s=5.0, full_read_s=60.0, clock=clock)
    for _ in range(4):
        views.get("r1")
        clock.now += 25.0
    # at 100 (full), 126, 152, then 178: 78 s after the full read started, a full read again
    assert given == [set(), {"a"}, {"a", "b"}, set()]
