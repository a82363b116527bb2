"""The optimizer's journal (``optimizer.jsonl``): rounds read back equal the rounds written, accepts stick, a
torn or bad line is skipped with a log line and loses nothing else, and a restarted optimizer goes on with the
recorded history (numbers, kept proposal) and runs only the rounds no earlier process recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from structlog.testing import capture_logs

from opendt.optimizer.journal import OptimizerJournal
from opendt.optimizer.round import Round
from opendt.optimizer.slo import Slo
from opendt.stream.windowing import Window
from opendt.twin.topology import SimTopology, TopologyWriter

from .conftest import FakeScenarios, make_optimizer

HOUR = 3_600_000
WIN = 300_000
SLO = {"energy_kwh_per_window": 0.6 / 12, "task_wait_p95_s": 1800}
NO_TASKS = pl.DataFrame({"cpu_count": []}, schema={"cpu_count": pl.Int64})


async def _rounds(tmp_path: Path, journal: OptimizerJournal) -> list[Round]:
    """Four rounds of a 100-host twin (1 kWh per hour) through the real round logic: kept (search), kept,
    rejected (the consolidate rule, far under the energy SLO), maintain (on target)."""
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(busy=60), journal)
    out = []
    slos = [SLO, SLO, {**SLO, "energy_kwh_per_window": 2.0 / 12}, {**SLO, "energy_kwh_per_window": 1.05 / 12}]
    for i, slo in enumerate(slos):
        await opt.slo.update(Slo(**slo))
        r = Round(i + 1, i * HOUR, (i + 1) * HOUR, 0)
        await opt.run_round(r)
        await journal.round(r.to_json_dict())
        out.append(r)
    assert [r.status for r in out] == ["kept", "kept", "rejected", "maintain"]
    return out


def _doc(r: Round) -> dict[str, Any]:
    return r.to_json_dict()


async def test_rounds_read_back_equal_the_rounds_written(tmp_path: Path) -> None:
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    written = await _rounds(tmp_path, journal)
    await journal.accepted(2, 7)
    docs = OptimizerJournal(journal.path).load()
    assert [d["round"] for d in docs] == [1, 2, 3, 4]
    back = [Round.from_json_dict(d) for d in docs]
    written[1].accepted_version = 7
    assert [_doc(r) for r in back] == [_doc(r) for r in written]
    # the proposal can be accepted from what was read: the same topology, changes and reason
    assert back[0].proposal is not None
    assert written[0].proposal is not None
    assert back[0].proposal.topology == written[0].proposal.topology
    assert back[0].proposal.patch == written[0].proposal.patch
    assert back[0].verdict == written[0].verdict
    assert len(_doc(back[0])["candidates"]) > 1


async def test_a_round_written_again_replaces_the_earlier_line(tmp_path: Path) -> None:
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    r = Round(4, 0, HOUR, 0, status="skipped", note="first")
    await journal.round(r.to_json_dict())
    await journal.accepted(4, 3)  # (an accept recorded for the earlier line is kept with it only)
    r.note = "second"
    await journal.round(r.to_json_dict())
    [doc] = journal.load()
    assert (doc["note"], doc["accepted_version"]) == ("second", None)


async def test_a_torn_last_line_is_cut_off_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.jsonl"
    journal = OptimizerJournal(path)
    await journal.round(Round(1, 0, HOUR, 0, status="maintain", note="ok").to_json_dict())
    with path.open("ab") as f:
        f.write(b'{"record": "round", "round": 2, "start_ms": 0}\n')  # valid JSON, not a round
        f.write(b"not json\n")
        f.write(b'{"record": "accepted", "round": 9, "version": 1}\n')  # an unknown round
        f.write(b'{"record": "verdict"}\n')
        f.write(b'{"record": "round", "round": 3, "sta')  # a write the kill interrupted
    with capture_logs() as logs:
        docs = OptimizerJournal(path).load()
    events = [e["event"] for e in logs]
    assert events.count("optimizer_journal_bad_line") == 3
    assert "optimizer_journal_truncated" in events
    assert [d["round"] for d in docs] == [1, 2]  # round 2 parses as a line; the optimizer rejects it
    assert path.read_bytes().endswith(b"\n")
    await journal.round(Round(5, 0, HOUR, 0, status="maintain", note="after").to_json_dict())
    assert [d["round"] for d in OptimizerJournal(path).load()] == [
        1,
        2,
        5,
    ]  # the append starts on its own line

    opt = make_optimizer(tmp_path, SLO, FakeScenarios(), OptimizerJournal(path))
    with capture_logs() as logs:
        assert opt.resume() == 2
    assert [e["round"] for e in logs if e["event"] == "optimizer_journal_bad_round"] == [2]
    assert [r.index for r in opt.rounds] == [1, 5]


def test_a_failed_write_is_logged_and_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    journal = OptimizerJournal(tmp_path / "dir")  # a directory: open() fails
    with capture_logs() as logs:
        asyncio.run(journal.round(Round(1, 0, HOUR, 0).to_json_dict()))
    assert journal.errors == 1
    assert logs[-1]["event"] == "optimizer_journal_write_failed"


async def test_resume_restores_history_best_and_accepts(tmp_path: Path) -> None:
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    written = await _rounds(tmp_path, journal)
    await journal.accepted(1, 1)

    async def publish(sim: SimTopology) -> None:
        published.append((sim.topology, sim.source, sim.reason))

    published: list[tuple[Any, str, str]] = []
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(), OptimizerJournal(journal.path), accept="apply")
    opt.box.offer(SimTopology(1, "optimizer", "round 1 accepted before the restart", opt.box.physical))
    opt.writer = TopologyWriter(opt.box, publish, lambda: 0)
    assert opt.resume() == 4
    view = opt.view()
    assert [h["round"] for h in view["history"]] == [1, 2, 3, 4]
    assert view["counts"] == {**dict.fromkeys(view["counts"], 0), "kept": 2, "rejected": 1, "maintain": 1}
    assert view["topology_updates"] == 1
    assert view["best"]["round"] == 2  # the latest kept round, not accepted yet
    assert view["best_config"] == written[1].proposal.patch  # type: ignore[union-attr]
    r = await opt.accept()
    assert r.index == 2
    assert r.accepted_version == 2
    assert written[1].proposal is not None
    assert published[0][0] == written[1].proposal.topology
    assert published[0][1] == "optimizer"
    # the accept is recorded: a third process sees both accepts and nothing left to accept
    again = make_optimizer(tmp_path, SLO, FakeScenarios(), OptimizerJournal(journal.path), accept="apply")
    again.resume()
    assert [r.accepted_version for r in again.rounds] == [1, 2, None, None]
    assert again.best is None
    assert again.accepted == 2


def _window(i: int) -> Window:
    return Window(i * WIN, (i + 1) * WIN)


async def test_replayed_windows_rerun_only_unrecorded_rounds(tmp_path: Path) -> None:
    """Rounds are numbered by windows since the run's start. After a restart, replayed windows queue no round
    the journal has; of the unrecorded ones (queued or running at the kill) the last is queued, and gives
    way silently (it never ran, nothing of it was recorded) to a fresh window's round, which continues the
    numbering; a fresh round that gives way is superseded, and recorded so."""
    journal = OptimizerJournal(tmp_path / "optimizer.jsonl")
    await journal.round(Round(1, 0, HOUR, 0, status="maintain", note="recorded").to_json_dict())
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(), journal)
    opt.resume()
    for i in range(36):  # three hours replayed: round 1 recorded, rounds 2 and 3 not
        await opt.after_window(_window(i), NO_TASKS, NO_TASKS, replayed=True)
    assert [(r.index, r.status, r.rerun) for r in opt.rounds] == [(1, "maintain", False), (3, "queued", True)]
    assert opt.superseded == 0  # round 2 gave way silently: nothing of it was lost, it never ran
    for i in range(36, 48):
        await opt.after_window(_window(i), NO_TASKS, NO_TASKS)
    assert [(r.index, r.status) for r in opt.rounds] == [(1, "maintain"), (4, "queued")]
    assert opt.rounds[-1].start_ms == 3 * HOUR
    for i in range(48, 60):
        await opt.after_window(_window(i), NO_TASKS, NO_TASKS)
    assert [(r.index, r.status) for r in opt.rounds] == [(1, "maintain"), (4, "superseded"), (5, "queued")]
    assert opt.superseded == 1
    assert [d["round"] for d in journal.load()] == [1, 4]


@pytest.mark.parametrize("every", [1, 12])
async def test_numbering_without_restart_is_unchanged(tmp_path: Path, every: int) -> None:
    opt = make_optimizer(tmp_path, SLO, FakeScenarios(), every_windows=every)
    for i in range(3 * every):
        await opt.after_window(_window(i), NO_TASKS, NO_TASKS)
    assert [r.index for r in opt.rounds] == [1, 2, 3]
