"""Pure privacy rules: how a request names a subject, consent scopes, keyed hashes."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from opsmantik_stream.enums import PrivacyIdentifier
from opsmantik_stream.ingest.store import session_uuid
from opsmantik_stream.privacy import PrivacyError, normalize_identifier, subject_hash
from opsmantik_stream.privacy.consent import normalize_scopes

pytestmark = pytest.mark.unit

SITE = uuid.UUID("6f1c2a34-1111-4222-8333-944455556666")


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("phone", "0532 123 45 67", "+905321234567"),
        ("phone", "+90 (532) 123-45-67", "+905321234567"),
        ("phone", "00905321234567", "+905321234567"),
        ("phone", "tel:+1 650 253 0000", "+16502530000"),
        ("email", "  Ayse.Yilmaz@Example.COM ", "ayse.yilmaz@example.com"),
        ("fingerprint", " k3x9q1 ", "k3x9q1"),
        ("fingerprint", "fp\x00-1", "fp-1"),
        ("session_id", "6F1C2A34-1111-4222-8333-944455556666", "6f1c2a34-1111-4222-8333-944455556666"),
    ],
)
def test_identifiers_normalise_like_stored_values(kind: str, raw: str, expected: str) -> None:
    subject = normalize_identifier(SITE, kind, raw)
    assert (subject.kind, subject.value) == (PrivacyIdentifier(kind), expected)


def test_a_non_uuid_session_id_maps_like_ingest_maps_it() -> None:
    subject = normalize_identifier(SITE, "session_id", "tab-42")
    assert subject.value == str(session_uuid(str(SITE), "tab-42", None, dt.date.today(), ""))


@pytest.mark.parametrize(
    ("kind", "raw", "code"),
    [
        ("ip", "1.2.3.4", "invalid_identifier_type"),
        ("phone", "call me", "invalid_identifier"),
        ("phone", "123", "invalid_identifier"),
        ("email", "no-at-sign", "invalid_identifier"),
        ("email", "two@@example.com", "invalid_identifier"),
        ("fingerprint", "", "invalid_identifier"),
        ("fingerprint", "\x00 ", "invalid_identifier"),
        ("fingerprint", "x" * 321, "invalid_identifier"),
    ],
)
def test_bad_identifiers_are_refused(kind: str, raw: str, code: str) -> None:
    with pytest.raises(PrivacyError) as exc:
        normalize_identifier(SITE, kind, raw)
    assert (exc.value.status, exc.value.code) == (400, code)


def test_phone_digits_for_free_text_search() -> None:
    assert normalize_identifier(SITE, "phone", "0532 123 45 67").phone_digits == "5321234567"
    assert normalize_identifier(SITE, "email", "a@b.c").phone_digits is None


def test_keyed_hash_depends_on_key_site_and_subject_not_on_spelling() -> None:
    key = b"k" * 32
    a = subject_hash(key, normalize_identifier(SITE, "phone", "0532 123 45 67"))
    assert a == subject_hash(key, normalize_identifier(SITE, "phone", "+90 532 1234567"))
    assert len(a) == 64 and "5321234567" not in a
    assert a != subject_hash(b"x" * 32, normalize_identifier(SITE, "phone", "0532 123 45 67"))
    assert a != subject_hash(key, normalize_identifier(uuid.uuid4(), "phone", "0532 123 45 67"))
    assert a != subject_hash(key, normalize_identifier(SITE, "fingerprint", "+905321234567"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], []),
        (["Marketing", " analytics", "marketing"], ["analytics", "marketing"]),
        (["ANALYTICS"], ["analytics"]),
    ],
)
def test_consent_scopes(given: list[str], expected: list[str]) -> None:
    assert normalize_scopes(given) == expected


def test_unknown_consent_scope_is_refused() -> None:
    with pytest.raises(PrivacyError) as exc:
        normalize_scopes(["analytics", "ads_personalization"])
    assert exc.value.code == "invalid_scope"
