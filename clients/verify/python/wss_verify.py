"""Verify the requests wss sends to a webhook receiver. Standard library only; one file to copy.

    from wss_verify import verify
    result = verify(secret, request.headers, request.get_data())
    if not result:
        abort(401, result.reason)

The scheme (docs/contract.md section 3): ``X-WSS-Signature`` is the lowercase hex HMAC-SHA256, keyed with
the UTF-8 bytes of the webhook's secret, of the ``X-WSS-Timestamp`` header value *as sent*
followed directly by the *raw* request body. The timestamp is Unix epoch seconds (wss sends
those) or an RFC 3339 date-time with an offset; it must be within ``tolerance`` seconds of the
receiver's clock, either way, which is what makes a captured request useless for replays. During
a secret rotation the signature header carries several comma-separated signatures (new first,
then old): the request is accepted when any of them matches. Comparisons are constant-time.

The rules, the reason codes and their order match the Rust reference ``wss::verify_headers``;
both are tested against ``tests/vectors/signatures.json`` and ``clients/verify/cases.json``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping, Optional, Tuple, Union

__all__ = ["verify", "sign", "Verification", "REASONS", "TIMESTAMP_HEADER", "SIGNATURE_HEADER", "DEFAULT_TOLERANCE"]

TIMESTAMP_HEADER = "X-WSS-Timestamp"
SIGNATURE_HEADER = "X-WSS-Signature"
#: Seconds a timestamp may be away from the receiver's clock, in either direction.
DEFAULT_TOLERANCE = 300.0

#: Every reason a request can be refused for, in the order they are checked.
REASONS = ("missing_timestamp", "missing_signature", "bad_timestamp", "too_old", "too_new", "no_match")

Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]
Secret = Union[str, bytes]

_EPOCH = re.compile(r"[0-9]+", re.ASCII)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_I64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`: truthy when the request is genuine and fresh.

    ``reason`` is ``None`` when ok, else one of :data:`REASONS`; ``detail`` says what to check.
    Neither ever contains the secret.
    """

    ok: bool
    reason: Optional[str] = None
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


_OK = Verification(True)


def sign(secret: Secret, timestamp: str, raw_body: bytes) -> str:
    """The ``X-WSS-Signature`` value wss sends: hex HMAC-SHA256(secret, timestamp ++ raw_body)."""
    return hmac.new(_key(secret), timestamp.encode("utf-8") + bytes(raw_body), hashlib.sha256).hexdigest()


def verify(
    secret: Secret,
    headers: Headers,
    raw_body: bytes,
    tolerance: float = DEFAULT_TOLERANCE,
    now: Union[float, datetime, None] = None,
) -> Verification:
    """Checks a request's ``X-WSS-Timestamp`` and ``X-WSS-Signature`` headers.

    ``headers``: any mapping (Flask's ``request.headers``, a dict, ...) or a list of
    ``(name, value)`` pairs; names match case-insensitively. The first timestamp header counts;
    every signature header counts. ``raw_body``: the bytes exactly as received, never
    re-serialized JSON. ``tolerance``: seconds. ``now``: the receiver's clock (Unix seconds or an
    aware datetime), for tests; default ``time.time()``.
    """
    timestamp, signatures = _find_headers(headers)
    if timestamp is None:
        return _refuse("missing_timestamp", f"the {TIMESTAMP_HEADER} header is missing")
    if not signatures:
        return _refuse("missing_signature", f"the {SIGNATURE_HEADER} header is missing")
    signed_at = _parse_timestamp(timestamp)
    if signed_at is None:
        return _refuse(
            "bad_timestamp",
            f"the timestamp {timestamp!r} is neither Unix epoch seconds nor an RFC 3339 date-time with an offset",
        )
    clock = time.time() if now is None else (now.timestamp() if isinstance(now, datetime) else float(now))
    age = clock - signed_at
    if age > tolerance:
        return _refuse("too_old", f"the timestamp is {math.ceil(age)} s old, more than the {tolerance:g} s tolerance")
    if -age > tolerance:
        return _refuse("too_new", f"the timestamp is {math.ceil(-age)} s in the future, more than the {tolerance:g} s tolerance")

    expected = hmac.new(_key(secret), timestamp.encode("utf-8") + bytes(raw_body), hashlib.sha256).digest()
    matched = False
    for header in signatures:
        for candidate in header.split(","):
            candidate = candidate.strip()
            if _HEX64.fullmatch(candidate):
                # No early exit: every candidate is compared, each in constant time.
                matched |= hmac.compare_digest(bytes.fromhex(candidate), expected)
    if matched:
        return _OK
    return _refuse(
        "no_match",
        "no signature matches: check that the secret is the webhook's current one and that the raw body "
        "is verified exactly as received",
    )


def _refuse(reason: str, detail: str) -> Verification:
    return Verification(False, reason, detail)


def _key(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _find_headers(headers: Headers) -> Tuple[Optional[str], list]:
    pairs = headers.items() if hasattr(headers, "items") else headers
    timestamp, signatures = None, []
    for name, value in pairs:
        lower = name.lower()
        if lower == "x-wss-timestamp":
            if timestamp is None:
                timestamp = value
        elif lower == "x-wss-signature":
            signatures.append(value)
    return timestamp, signatures


def _parse_timestamp(value: str) -> Optional[float]:
    """Unix seconds, or an RFC 3339 date-time with an offset (leap second 60 rolls over)."""
    if _EPOCH.fullmatch(value):
        digits = value.lstrip("0") or "0"
        # Beyond 19 digits it cannot fit (and int() refuses very long digit strings anyway).
        if len(digits) > 19 or int(digits) > _I64_MAX:
            return None
        return float(int(digits))
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month) and hour <= 23 and minute <= 59 and second <= 60):
        return None
    offset = 0
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            return None
        offset = (oh * 3600 + om * 60) * (-1 if m.group(9) == "-" else 1)
    fraction = float("0." + m.group(7)[:9]) if m.group(7) else 0.0
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset + fraction


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
