"""Offline conversion uploads (SPEC §6): claim, leases, circuit breaker, token buckets,
ledger, retries, rescue and the operator surface, as functions over PostgreSQL connections.

The Ray ``Uploader`` actor (``actors/uploader.py``) only drives :class:`UploadEngine`.
"""

from opsmantik_stream.uploads.breaker import BreakerConfig, PgBreakerStorage, Signal, record_outcome
from opsmantik_stream.uploads.bucket import AccountBucket, BucketSet, split_share
from opsmantik_stream.uploads.credentials import (
    CredentialsError,
    SiteCredentials,
    credentials_from_mapping,
    open_credentials,
    save_credentials,
    vault_from_settings,
)
from opsmantik_stream.uploads.engine import UploadEngine, outcome_signal
from opsmantik_stream.uploads.rescue import rescue_stale

__all__ = [
    "AccountBucket",
    "BreakerConfig",
    "BucketSet",
    "CredentialsError",
    "PgBreakerStorage",
    "Signal",
    "SiteCredentials",
    "UploadEngine",
    "credentials_from_mapping",
    "open_credentials",
    "outcome_signal",
    "record_outcome",
    "rescue_stale",
    "save_credentials",
    "split_share",
    "vault_from_settings",
]
