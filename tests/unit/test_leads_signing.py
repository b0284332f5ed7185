"""Call-event HMAC verification: window edges (injected clock), next secret, bad input."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from opsmantik_stream.leads.signing import sign, signature_sha256, verify_signature, within_window

pytestmark = pytest.mark.unit

BODY = b'{"site_id":"abc","fingerprint":"fp"}'
NOW = 1_760_000_000
CUR, NEXT = "current-secret-0123456789", "next-secret-0123456789abc"


def test_sign_is_hmac_sha256_over_ts_dot_raw_body() -> None:
    expected = hmac.new(CUR.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(CUR, NOW, BODY) == expected


@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (NOW, True),
        (NOW - 300, True),  # exactly 300 s old: still inside
        (NOW - 301, False),  # one second too old
        (NOW + 60, True),  # exactly 60 s ahead: still inside
        (NOW + 61, False),  # one second too far ahead
    ],
)
def test_window_edges(ts: int, ok: bool) -> None:
    assert within_window(ts, NOW) is ok
    assert verify_signature((CUR, NEXT), str(ts), sign(CUR, ts, BODY), BODY, now=NOW) is ok


def test_next_secret_is_accepted_and_unknown_secret_is_not() -> None:
    assert verify_signature((CUR, NEXT), str(NOW), sign(NEXT, NOW, BODY), BODY, now=NOW)
    assert not verify_signature((CUR, NEXT), str(NOW), sign("someone-else", NOW, BODY), BODY, now=NOW)
    # without a next secret configured only the current one passes
    assert not verify_signature((CUR, None), str(NOW), sign(NEXT, NOW, BODY), BODY, now=NOW)


def test_signature_is_case_insensitive_and_bound_to_the_raw_body() -> None:
    sig = sign(CUR, NOW, BODY)
    assert verify_signature((CUR,), str(NOW), sig.upper(), BODY, now=NOW)
    assert not verify_signature((CUR,), str(NOW), sig, BODY + b" ", now=NOW)
    assert not verify_signature((CUR,), str(NOW + 1), sig, BODY, now=NOW)


@pytest.mark.parametrize(
    ("ts", "sig"),
    [
        (None, "a" * 64),
        ("abc", "a" * 64),
        ("12345", "a" * 64),  # too short to be unix seconds
        (str(NOW), None),
        (str(NOW), "a" * 63),
        (str(NOW), "z" * 64),
        (str(NOW), ""),
    ],
)
def test_malformed_headers_are_rejected(ts: str | None, sig: str | None) -> None:
    assert not verify_signature((CUR, NEXT), ts, sig, BODY, now=NOW)


def test_no_secrets_never_verifies() -> None:
    assert not verify_signature((), str(NOW), sign(CUR, NOW, BODY), BODY, now=NOW)


def test_signature_hash_ignores_case() -> None:
    sig = sign(CUR, NOW, BODY)
    assert signature_sha256(sig) == signature_sha256(sig.upper())
    assert len(signature_sha256(sig)) == 64
