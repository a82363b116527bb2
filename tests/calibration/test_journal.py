"""calibration.parquet across processes: a journal reads back what it wrote, a later status or a re-run of a
round replaces its row, and only finished rounds count as done."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from opendt.calibration.journal import Journal, RoundRecord, ScoreRow, from_frame, to_frame


def _record(n: int, status: str, **kw: object) -> RoundRecord:
    return RoundRecord(
        n,
        n * 900_000,
        n * 900_000 - 900_000,
        n * 900_000 + 600_000,
        status,
        f"round {n}",
        "mape",
        **kw,  # type: ignore[arg-type]
    )


def test_records_round_trip_through_the_file_format() -> None:
    recs = [
        _record(
            1,
            "applied",
            candidates=3,
            samples=30,
            incumbent_score=30.5,
            winner_score=28.25,
            winner={"cpuPowerModel.calibrationFactor": 2.0},
            in_effect={"cpuPowerModel.calibrationFactor": 2.0},
            version=1,
            duration_s=0.5,
            scores=[
                ScoreRow("{}", 0, "ok", 28.25, 28.25, 10.0, 1.0, 30),
                ScoreRow("{}", 0, "failed", error="x"),
            ],
        ),
        _record(2, "kept"),
    ]
    back = from_frame(to_frame(recs))
    assert [r.row() for r in back] == [r.row() for r in recs]


async def test_a_new_process_keeps_the_rounds_of_the_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "calibration.parquet"
    first = Journal(path)
    await first.save(_record(1, "applied", version=1))
    await first.save(_record(2, "chosen"))

    second = Journal(path)
    second.load()
    assert [(r.round, r.status) for r in second.records] == [(1, "applied"), (2, "chosen")]
    assert second.done_at(900_000) is not None
    assert second.done_at(1_800_000) is None, "a chosen round still has to be applied"
    assert second.done_at(2_700_000) is None
    new: list[int] = []
    second.on_new = lambda r: new.append(r.round)
    await second.save(_record(2, "applied", version=2))  # the re-run replaces the row of its round
    await second.save(_record(3, "kept"))
    assert new == [3]
    df = pl.read_parquet(path)
    assert df["round"].to_list() == [1, 2, 3]
    assert df["status"].to_list() == ["applied", "applied", "kept"]


def test_no_file_no_records(tmp_path: Path) -> None:
    j = Journal(tmp_path / "missing.parquet")
    j.load()
    assert j.records == []
    Journal(None).load()
