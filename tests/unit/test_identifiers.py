"""Google's normalisation of user identifiers before hashing (enhanced conversions): emails
trimmed and lower-cased, dots removed before @gmail.com / @googlemail.com; phones in E.164; the
digest is lower-case hex SHA-256 of the normalised UTF-8 text."""

from __future__ import annotations

import hashlib

import pytest

from opsmantik_stream.destinations.base import (
    IdentifierKind,
    UserIdentifier,
    email_sha256,
    normalize_e164,
    normalize_email,
    phone_sha256,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("jane.doe@example.com", "jane.doe@example.com"),
        ("  Jane.Doe@Example.COM \n", "jane.doe@example.com"),
        ("Jane.Doe@gmail.com", "janedoe@gmail.com"),
        ("j.a.n.e@GoogleMail.com", "jane@googlemail.com"),
        ("jane.doe+ads@gmail.com", "janedoe+ads@gmail.com"),  # Google's rule removes dots only
        ("jane.doe@gmail.com.tr", "jane.doe@gmail.com.tr"),  # another domain keeps its dots
        ("jane.doe@mail.gmail.com", "jane.doe@mail.gmail.com"),
        ("not an email", None),
        ("@example.com", None),
        ("jane@", None),
        ("jane@localhost", None),
        ("a@b@example.com", None),
        ("...@gmail.com", None),
        ("", None),
    ],
)
def test_email_normalisation(raw: str, normalised: str | None) -> None:
    assert normalize_email(raw) == normalised
    expected = None if normalised is None else hashlib.sha256(normalised.encode()).hexdigest()
    assert email_sha256(raw) == expected


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("+1 650-253-0000", "+16502530000"),
        ("+1 (650) 253 0000", "+16502530000"),
        ("+90 532 123 45 67", "+905321234567"),
        ("0090 532 123 45 67", "+905321234567"),
        ("+44.20.7031.3000", "+442070313000"),
        ("650-253-0000", None),  # no country code: never guessed
        ("+0 650 253 0000", None),
        ("+1234", None),
        ("+1234567890123456", None),  # longer than E.164's 15 digits
        ("tel:+16502530000", None),
        ("", None),
    ],
)
def test_phone_normalisation(raw: str, normalised: str | None) -> None:
    assert normalize_e164(raw) == normalised
    expected = None if normalised is None else hashlib.sha256(normalised.encode()).hexdigest()
    assert phone_sha256(raw) == expected


def test_digests_are_fixed_lower_case_hex() -> None:
    # fixed values: a change of encoding, case or normalisation would change them
    assert phone_sha256("+1 650-253-0000") == "3ad9f10d73829a714b1383221691d4dbf08484f3ceeae884f53053a1c7bb0a92"
    assert email_sha256(" Jane.Doe@Gmail.com ") == "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
    assert UserIdentifier.email("janedoe@gmail.com") == UserIdentifier(
        IdentifierKind.EMAIL_SHA256, "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
    )
    with pytest.raises(ValueError):
        UserIdentifier.email("nobody")
    with pytest.raises(ValueError):
        UserIdentifier.phone("5321234567")
