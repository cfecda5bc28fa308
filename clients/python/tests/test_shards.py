"""shard_of and stream_key against every case of tests/vectors/shards.json, the cases the
service's own shard function passes too; and the vectors themselves against a CRC-32 computed
here bit by bit from the polynomial, so that a wrong vector cannot hide behind zlib agreeing
with itself. Pure: no Redis, no service."""

import json
import math
from pathlib import Path

import pytest

from wss_client import shard_of, stream_key

ROOT = Path(__file__).resolve().parents[3]  # clients/python/tests -> the repository
VECTORS = json.loads((ROOT / "tests" / "vectors" / "shards.json").read_text(encoding="utf-8"))


def crc32_bitwise(data: bytes) -> int:
    """The IEEE CRC-32 from its definition (reflected polynomial 0xEDB88320), independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_shard_of_vector(case):
    assert shard_of(case["tenant"], case["n"]) == case["shard"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vector_is_right(case):
    crc = crc32_bitwise(case["tenant"].encode("utf-8"))
    assert crc == case["crc32"]
    assert case["shard"] == crc % case["n"]


@pytest.mark.parametrize("case", VECTORS["stream_keys"], ids=lambda c: c["key"])
def test_stream_key_vector(case):
    assert stream_key(case["prefix"], case["tenant"], case["n"]) == case["key"]


def test_the_vectors_cover_the_edge_cases():
    cases = VECTORS["cases"]
    assert len(cases) >= 30
    assert any(c["n"] == 1 for c in cases)
    assert any(c["tenant"] == "" for c in cases)
    assert any(not c["tenant"].isascii() for c in cases)
    assert any(len(c["tenant"]) == 64 and c["is_tenant_id"] for c in cases)
    assert any(c["n"] == 2**32 - 1 for c in cases)

    def signed(crc: int, n: int) -> "tuple[int, int]":
        as_i32 = crc - 2**32 if crc >= 2**31 else crc
        return int(math.fmod(as_i32, n)), as_i32 % n  # truncated (C, Go, JS), floored (Python)

    # A CRC read as a signed 32-bit integer gives another shard in at least one case, whichever way
    # the language rounds the remainder.
    catching = [c for c in cases if c["shard"] not in signed(c["crc32"], c["n"])]
    assert len(catching) >= 5, [c["name"] for c in catching]
    assert {c["name"] for c in cases if c["name"].startswith("high-bit-")} <= {c["name"] for c in catching}


def test_every_tenant_lands_in_range_and_n_1_is_shard_0():
    for case in VECTORS["cases"]:
        assert 0 <= shard_of(case["tenant"], case["n"]) < case["n"]
        assert shard_of(case["tenant"], 1) == 0


def test_n_1_keeps_the_unsharded_stream_name():
    assert stream_key("wss:", "acme", 1) == "wss:events"
    assert stream_key("wss:", "acme", 8) == "wss:events:{6}"


@pytest.mark.parametrize("n", [0, -1, True, 1.0, "8", None])
def test_n_must_be_an_integer_of_at_least_1(n):
    with pytest.raises(ValueError, match="WSS_STREAM_SHARDS"):
        shard_of("acme", n)
    with pytest.raises(ValueError, match="WSS_STREAM_SHARDS"):
        stream_key("wss:", "acme", n)


def test_tenant_must_be_a_str():
    with pytest.raises(TypeError, match="tenant must be a str"):
        shard_of(b"acme", 8)  # type: ignore[arg-type]


def test_a_lone_surrogate_is_refused_rather_than_hashed_as_something_else():
    with pytest.raises(ValueError):
        shard_of("acme\ud800", 8)
