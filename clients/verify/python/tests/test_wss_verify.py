"""wss_verify against every signature test vector of the project (tests/vectors/signatures.json)
and every shared verifier case (clients/verify/cases.json), plus the Python-specific header forms."""

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from wss_verify import REASONS, Verification, sign, verify

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[3]  # clients/verify/python/tests -> the repository
VECTORS = json.loads((ROOT / "tests" / "vectors" / "signatures.json").read_text(encoding="utf-8"))
SHARED = json.loads((ROOT / "clients" / "verify" / "cases.json").read_text(encoding="utf-8"))

T = 1767225600  # 2026-01-01T00:00:00Z
SECRET = "wss_test_secret"
BODY = b'{"order_id":"A-1001","status":"shipped"}'


def signed_at(timestamp: str) -> float:
    return float(timestamp) if timestamp.isdigit() else datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def headers(timestamp: str, signature: str) -> dict:
    return {"X-WSS-Timestamp": timestamp, "X-WSS-Signature": signature}


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_valid_vector_signs_and_verifies(case):
    body = base64.b64decode(case["body_base64"])
    assert sign(case["secret"], case["timestamp"], body) == case["signature"]
    result = verify(case["secret"], headers(case["timestamp"], case["signature"]), body, now=signed_at(case["timestamp"]) + 10)
    assert result == Verification(True), result


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vector_is_refused(case):
    body = base64.b64decode(case["body_base64"])
    result = verify(case["secret"], headers(case["timestamp"], case["signature"]), body, now=signed_at(case["timestamp"]) + 10)
    assert not result
    assert result.reason == "no_match", result


def test_the_vectors_are_all_there():
    assert len(VECTORS["valid"]) >= 7 and len(VECTORS["invalid"]) >= 6


@pytest.mark.parametrize("case", SHARED["cases"], ids=lambda c: c["name"])
def test_shared_case(case):
    result = verify(
        case.get("secret", SHARED["secret"]),
        [tuple(pair) for pair in case["headers"]],
        case.get("body", SHARED["body"]).encode("utf-8"),
        tolerance=case.get("tolerance", SHARED["tolerance"]),
        now=case["now"],
    )
    got = "ok" if result else result.reason
    assert got == case["expect"], result
    assert result.reason is None or result.reason in REASONS


def test_iso8601_and_epoch_timestamps_sign_the_header_as_sent():
    for ts in ("1767225600", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"):
        assert verify(SECRET, headers(ts, sign(SECRET, ts, BODY)), BODY, now=T)
    # The same instant written differently is a different signed message.
    assert verify(SECRET, headers("2026-01-01T00:00:00Z", sign(SECRET, "1767225600", BODY)), BODY, now=T).reason == "no_match"


def test_five_minute_window_both_ways():
    h = headers(str(T), sign(SECRET, str(T), BODY))
    assert verify(SECRET, h, BODY, now=T + 300)
    assert verify(SECRET, h, BODY, now=T - 300)
    assert verify(SECRET, h, BODY, now=T + 301).reason == "too_old"
    assert verify(SECRET, h, BODY, now=T - 301).reason == "too_new"
    assert verify(SECRET, h, BODY, now=datetime.fromtimestamp(T + 301, timezone.utc)).reason == "too_old"
    assert verify(SECRET, h, BODY, tolerance=600, now=T + 400)


def test_the_default_clock_is_now():
    import time

    ts = str(int(time.time()))
    assert verify(SECRET, headers(ts, sign(SECRET, ts, BODY)), BODY)
    assert verify(SECRET, headers(str(T), sign(SECRET, str(T), BODY)), BODY).reason in ("too_old", "too_new")


def test_rotation_header_new_then_old():
    new, old = sign(SECRET, str(T), BODY), sign("wss_previous_secret", str(T), BODY)
    h = headers(str(T), f"{new},{old}")
    assert verify(SECRET, h, BODY, now=T)
    assert verify("wss_previous_secret", h, BODY, now=T)
    assert verify("wss_neither_secret", h, BODY, now=T).reason == "no_match"


def test_header_forms():
    sig = sign(SECRET, str(T), BODY)
    assert verify(SECRET, {"x-wss-timestamp": str(T), "x-wss-signature": sig}, BODY, now=T)
    assert verify(SECRET, [("X-WSS-Timestamp", str(T)), ("X-WSS-Signature", sig)], BODY, now=T)
    assert verify(SECRET.encode(), headers(str(T), sig), bytearray(BODY), now=T)
    assert verify(SECRET, {}, BODY, now=T).reason == "missing_timestamp"


def test_a_refusal_never_shows_the_secret():
    for case in SHARED["cases"]:
        secret = case.get("secret", SHARED["secret"])
        result = verify(secret, case["headers"], case.get("body", SHARED["body"]).encode(), now=case["now"])
        assert secret not in result.detail and secret not in repr(result)


def test_absurd_timestamps_are_refused_not_raised():
    assert verify(SECRET, headers("9" * 5000, "0" * 64), BODY, now=T).reason == "bad_timestamp"
    assert verify(SECRET, headers("0" * 5000 + "1767225600", sign(SECRET, "0" * 5000 + "1767225600", BODY)), BODY, now=T)
