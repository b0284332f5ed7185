"""The tracker snippet's gateway address: the public URL when configured, else the address the
gateway listens on, else a placeholder the CLI explains."""

from __future__ import annotations

import pytest

from opsmantik_stream.config import load_settings
from opsmantik_stream.snippet import PLACEHOLDER_URL, gateway_url, tracker_snippet

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"OPSMANTIK_HOST": "10.1.2.3", "OPSMANTIK_PORT": "9000"}, "http://10.1.2.3:9000"),
        ({"OPSMANTIK_HOST": "::1", "OPSMANTIK_PORT": "9000"}, "http://[::1]:9000"),
        ({"OPSMANTIK_HOST": "0.0.0.0"}, None),
        ({"OPSMANTIK_HOST": "::"}, None),
        (
            {"OPSMANTIK_HOST": "0.0.0.0", "OPSMANTIK_PUBLIC_URL": "https://track.example.com/"},
            "https://track.example.com",
        ),
        ({"OPSMANTIK_PUBLIC_URL": "https://example.com/opsmantik"}, "https://example.com/opsmantik"),
    ],
)
def test_gateway_url(env: dict[str, str], expected: str | None) -> None:
    assert gateway_url(load_settings(environ=env)) == expected


def test_snippet_carries_site_consent_and_host() -> None:
    assert tracker_snippet("ab" * 16, "https://track.example.com") == (
        '<script src="https://track.example.com/assets/core.js" data-ops-site-id="'
        + "ab" * 16
        + '" data-consent="analytics,marketing" async></script>'
    )
    assert tracker_snippet("cd" * 16, None).startswith(f'<script src="{PLACEHOLDER_URL}/assets/core.js"')
