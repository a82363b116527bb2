"""Datacenters on the wire (DESIGN §4): the id, the header, and the partition function, which is Kafka's
default partitioner's (Java ``Utils.toPositive(Utils.murmur2(bytes)) % n``), so any producer can follow it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from opendt.models.datacenter import DEFAULT, check_id, header, header_of, partition_for
from opendt.settings import KafkaSettings
from opendt.stream.datacenters import DatacenterFilter

# Kafka's UtilsTest.testMurmur2 vectors (signed 32-bit murmur2 of the UTF-8 bytes)
MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "signed"), MURMUR2.items())
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_the_partition_is_kafkas_for_the_id_as_a_key(key: str, signed: int, n: int) -> None:
    assert partition_for(key, n) == (signed & 0x7FFFFFFF) % n


def test_ids_and_headers() -> None:
    assert check_id("ams-1.dc_2") == "ams-1.dc_2"
    for bad in ("", "-x", "../etc", "a" * 65, "dc 1", "é"):
        with pytest.raises(ValueError, match="datacenter id"):
            check_id(bad)
    with pytest.raises(ValueError, match="datacenter"):
        KafkaSettings(datacenter="../x")
    assert header(DEFAULT) == ()
    assert header("ams") == (("datacenter", b"ams"),)
    assert header_of(None) == DEFAULT
    assert header_of([("content-type", b"application/x-ndjson")]) == DEFAULT
    assert header_of([("datacenter", b"ams")]) == "ams"
    assert header_of([("datacenter", b"\xff")]) is None
    assert header_of([("datacenter", b"../x")]) is None


@dataclass
class Rec:
    headers: tuple[tuple[str, bytes], ...]


def test_a_twin_keeps_its_own_records_and_counts_the_others() -> None:
    unnamed, ams, fra, bad = (
        Rec(()),
        Rec((("datacenter", b"ams"),)),
        Rec((("datacenter", b"fra"),)),
        Rec((("datacenter", b"\x00"),)),
    )
    default = DatacenterFilter()
    same = [unnamed, unnamed]
    assert default.keep(same) is same  # a stream of one unnamed datacenter: nothing to do
    assert default.keep([unnamed, ams, bad]) == [unnamed]
    assert default.others == 2
    mine = DatacenterFilter("ams")
    assert mine.keep([unnamed, ams, fra, ams, bad]) == [ams, ams]
    assert mine.others == 3
