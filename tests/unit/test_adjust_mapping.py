"""Wire shapes of issue 13: adjustments for the Google Ads API, identifier-only conversions for
both Google destinations, and the Data Manager's refusal of a retraction."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import httpx

from opsmantik_stream.config import Settings
from opsmantik_stream.destinations.base import Conversion, DestinationContext, IdentifierKind, UserIdentifier
from opsmantik_stream.destinations.data_manager import RETRACTION_NOT_SUPPORTED, DataManagerDestination, build_dm_event
from opsmantik_stream.destinations.google_ads import build_ads_adjustment, build_ads_conversion
from opsmantik_stream.enums import OutcomeKind

EMAIL = hashlib.sha256(b"janedoe@gmail.com").hexdigest()
PHONE = hashlib.sha256(b"+905321234567").hexdigest()
WHEN = datetime(2026, 3, 5, 14, 30, tzinfo=UTC)


def _conv(**kw: object) -> Conversion:
    base: dict[str, object] = {
        "queue_id": "q",
        "order_id": "om_1",
        "conversion_time": WHEN,
        "value_minor": 12345,
        "currency": "eur",
    }
    base.update(kw)
    return Conversion(**base)  # type: ignore[arg-type]


def test_ads_restatement_and_retraction_bodies() -> None:
    at = datetime(2026, 3, 7, 9, 0, 1, 999, tzinfo=UTC)
    restate = build_ads_adjustment(_conv(adjustment="restatement", adjusted_at=at, value_minor=9000), "123", "456")
    assert restate == {
        "conversionAction": "customers/123/conversionActions/456",
        "adjustmentType": "RESTATEMENT",
        "orderId": "om_1",
        "adjustmentDateTime": "2026-03-07 09:00:01+00:00",
        "restatementValue": {"adjustedValue": 90.0, "currencyCode": "EUR"},
    }
    retract = build_ads_adjustment(_conv(adjustment="retraction", adjusted_at=at), "123", "456")
    assert retract["adjustmentType"] == "RETRACTION" and "restatementValue" not in retract


def test_identifier_only_conversions_carry_no_click_field() -> None:
    conv = _conv(
        user_identifiers=(
            UserIdentifier(IdentifierKind.EMAIL_SHA256, EMAIL),
            UserIdentifier(IdentifierKind.PHONE_SHA256, PHONE),
        )
    )
    ads = build_ads_conversion(conv, "123", "456")
    assert not {"gclid", "wbraid", "gbraid"} & set(ads)
    assert ads["userIdentifiers"] == [{"hashedEmail": EMAIL}, {"hashedPhoneNumber": PHONE}]
    dm = build_dm_event(conv)
    assert "adIdentifiers" not in dm
    assert dm["userData"] == {"userIdentifiers": [{"emailAddress": EMAIL}, {"phoneNumber": PHONE}]}
    with_click = build_ads_conversion(_conv(gclid="G", user_identifiers=conv.user_identifiers), "123", "456")
    assert with_click["gclid"] == "G" and len(with_click["userIdentifiers"]) == 2


async def test_data_manager_refuses_a_retraction_before_any_request(tmp_path: object) -> None:
    settings = Settings(data_dir=str(tmp_path))
    async with httpx.AsyncClient() as http:
        dest = DataManagerDestination(DestinationContext(settings, http, httpx.Timeout(5.0), 10))
        assert dest.refuse(_conv(adjustment="restatement", adjusted_at=WHEN)) is None
        verdict = dest.refuse(_conv(adjustment="retraction", adjusted_at=WHEN))
    assert verdict is not None and verdict.cls.kind is OutcomeKind.FAILED
    assert verdict.code == RETRACTION_NOT_SUPPORTED and "cannot retract" in (verdict.message or "")
