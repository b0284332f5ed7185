"""Google destinations: Google Ads API and Data Manager API clients, OAuth, classification.

Typical use by the uploader::

    client = make_client(creds.destination)           # or GoogleAdsClient() / DataManagerClient()
    result = await client.upload(creds, conversions, before_request=bucket_wait)
    for row in result.rows:                             # one RowOutcome per input, in order
        decision = RetryPolicy().decide(row, attempt, now)
"""

from __future__ import annotations

import httpx

from .ads import (
    DEFAULT_ADS_API_VERSION,
    DEFAULT_ADS_BASE_URL,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    GoogleAdsClient,
    currency_exponent,
    format_ads_datetime,
    format_rfc3339,
    hash_phone_e164,
    minor_to_major,
    pick_click_id,
)
from .classify import classify
from .data_manager import DEFAULT_DATA_MANAGER_BASE_URL, DataManagerClient
from .oauth import DEFAULT_TOKEN_URL, OAuthConfigError, OAuthError, OAuthTransientError, TokenProvider
from .types import (
    BeforeRequest,
    Classification,
    Conversion,
    ErrorCategory,
    GoogleCredentials,
    OutcomeKind,
    RowOutcome,
    UploadClient,
    UploadResult,
)

__all__ = [
    "DEFAULT_ADS_API_VERSION",
    "DEFAULT_ADS_BASE_URL",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DATA_MANAGER_BASE_URL",
    "DEFAULT_TOKEN_URL",
    "MAX_CHUNK_SIZE",
    "BeforeRequest",
    "Classification",
    "Conversion",
    "DataManagerClient",
    "ErrorCategory",
    "GoogleAdsClient",
    "GoogleCredentials",
    "OAuthConfigError",
    "OAuthError",
    "OAuthTransientError",
    "OutcomeKind",
    "RowOutcome",
    "TokenProvider",
    "UploadClient",
    "UploadResult",
    "classify",
    "currency_exponent",
    "format_ads_datetime",
    "format_rfc3339",
    "hash_phone_e164",
    "make_client",
    "minor_to_major",
    "pick_click_id",
]


def make_client(
    destination: str,
    http: httpx.AsyncClient | None = None,
    *,
    tokens: TokenProvider | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: httpx.Timeout | None = None,
    base_url: str | None = None,
    api_version: str = DEFAULT_ADS_API_VERSION,
) -> UploadClient:
    """Build the client for ``destination`` (``google_ads`` or ``data_manager``).

    Pass a shared ``http`` client and ``tokens`` provider to reuse connections and cached
    access tokens across both destinations. ``base_url`` is the deployment's API root (Google's
    by default).
    """
    if destination == "google_ads":
        return GoogleAdsClient(
            http, tokens=tokens, chunk_size=chunk_size, timeout=timeout, base_url=base_url, api_version=api_version
        )
    if destination == "data_manager":
        return DataManagerClient(http, tokens=tokens, chunk_size=chunk_size, timeout=timeout, base_url=base_url)
    raise ValueError(f"unsupported destination: {destination!r}")
