"""The per-stage timings take turns: each callable once per round, best of the rounds."""

from __future__ import annotations

from typing import Any

from pipelines import bench


def test_callables_take_turns_and_each_keeps_its_best_round(monkeypatch: Any) -> None:
    clock = [0.0]
    calls: list[str] = []
    # seconds each call takes, per callable, round after round: a spike in round 1 hits both
    durations = {"stage": [2.0, 9.0, 1.5], "peer": [1.0, 7.0, 1.2]}

    def fake_clock() -> float:
        return clock[0]

    def make(name: str) -> Any:
        def fn() -> None:
            calls.append(name)
            clock[0] += durations[name][sum(c == name for c in calls) - 1]

        return fn

    monkeypatch.setattr(bench.time, "perf_counter", fake_clock)
    best = bench.best_in_turns({"stage": make("stage"), "peer": make("peer")}, rounds=3)
    assert calls == ["stage", "peer"] * 3
    assert best == {"stage": 1.5, "peer": 1.0}
