"""The destination registry and the shared credential contract (no network, no database)."""

from __future__ import annotations

import pytest

from opsmantik_stream.destinations import registry
from opsmantik_stream.destinations.base import CredentialsError, Destination
from opsmantik_stream.destinations.google.credentials import GoogleCredentials
from opsmantik_stream.enums import Destination as DestinationName
from opsmantik_stream.uploads.credentials import credentials_from_mapping

pytestmark = pytest.mark.unit

GOOD = {
    "customer_id": "123-456-7890",
    "client_id": "cid",
    "client_secret": "s3cret",
    "refresh_token": "r3fresh",
    "conversion_action": " customers/1/conversionActions/55 ",
}


def test_the_schema_enum_mirrors_the_shipped_registry() -> None:
    assert registry.names()[: len(registry.SHIPPED)] == [d.value for d in DestinationName]
    for name in registry.SHIPPED:
        cls = registry.get(name)
        assert issubclass(cls, Destination) and cls.name == name and cls.label


def test_register_and_unregister_a_plugin() -> None:
    with pytest.raises(ValueError):
        registry.register("Not A Name", "x:y")
    with pytest.raises(ValueError):
        registry.unregister("google_ads")
    registry.register("toy", "tests.integration._toy_destination:ToyDestination")
    try:
        assert "toy" in registry.names() and registry.get("toy").name == "toy"
    finally:
        registry.unregister("toy")
    with pytest.raises(registry.UnknownDestination):
        registry.get("toy")


@pytest.mark.parametrize("destination", ["google_ads", "data_manager"])
def test_google_credentials_are_validated_and_normalised(destination: str) -> None:
    creds = credentials_from_mapping({"destination": destination, **GOOD, "requests_per_s": 5})
    assert creds.account_id == "1234567890" and creds.requests_per_s == 5
    assert isinstance(creds.fields, GoogleCredentials)
    assert creds.fields.conversion_action == "customers/1/conversionActions/55"
    assert "s3cret" not in repr(creds.fields) and "r3fresh" not in repr(creds.fields)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"customer_id": "abc"}, "invalid_customer_id"),
        ({"login_customer_id": "12x"}, "invalid_login_customer_id"),
        ({"conversion_action": "purchase"}, "invalid_conversion_action"),
        ({"client_secret": None, "refresh_token": ""}, "invalid_body"),
        ({"unknown_field": "x"}, "invalid_body"),
        ({"requests_per_s": -1}, "invalid_body"),
        ({"api_base_url": "http://127.0.0.1:9"}, "endpoint_not_allowed"),
        ({"token_url": "http://127.0.0.1:9/token"}, "endpoint_not_allowed"),
        ({"destination": "meta"}, "invalid_destination"),
    ],
)
def test_bad_credentials_are_refused_with_a_code(change: dict[str, object], code: str) -> None:
    with pytest.raises(CredentialsError) as info:
        credentials_from_mapping({"destination": "google_ads", **GOOD, **change})
    assert info.value.code == code


def test_opening_ignores_keys_the_schema_does_not_know() -> None:
    cls = registry.get("google_ads")
    sealed = {**GOOD, "api_base_url": "http://evil.test", "token_url": "http://evil.test/token"}
    opened = cls.open_credentials(sealed)
    assert isinstance(opened, GoogleCredentials) and not hasattr(opened, "api_base_url")
    with pytest.raises(CredentialsError) as info:
        cls.open_credentials({"customer_id": "1"})
    assert info.value.code == "INVALID_CREDENTIALS"
