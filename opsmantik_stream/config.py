"""Settings: one validated object read once from ``OPSMANTIK_*`` environment variables.

Every knob has its unit in its name (``batch_max_wait_ms``).  A bad value stops start-up with
one line that names the variable, e.g. ``OPSMANTIK_PORT: expected an integer >= 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

from opsmantik_stream.budget import PoolPlan

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "OPSMANTIK_"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # Where the data lives. No URL -> an embedded PostgreSQL (pgserver) in data_dir/pg.
    # The URL's role owns the schema (opsmantik_owner, not a superuser: docs/security.md);
    # migrations, partitions, uploaders, maintenance and the CLI use it.
    database_url: str | None = None
    # API queries log in as the non-owner role opsmantik_api. Default: database_url with that
    # user and no password (enough for the embedded server's local trust authentication).
    api_database_url: str | None = None
    # The gateway's service queries (tokens, call-event secrets, credential writes, /metrics,
    # /ops) log in as the narrow role opsmantik_gateway. Default: database_url with that user.
    gateway_database_url: str | None = None
    data_dir: str = ".opsmantik"
    # Ray: no address -> a local Ray bound to 127.0.0.1.
    ray_address: str | None = None
    ray_num_cpus: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    # Actors are named within this namespace; tests give each stack its own.
    ray_namespace: str = "opsmantik"
    # HTTP gateway.
    host: str = "127.0.0.1"
    port: Port = 8000
    # Secrets. vault_key: base64 of a 32-byte Curve25519 private key (only uploaders use
    # it); without it the key file vault_key_file (default ~/.config/opsmantik/vault.key,
    # outside the data folder) is used, generated on first start. The gateway and the CLI
    # seal with the public key only: vault_public_key, else derived / read beside the file.
    vault_key: str | None = None
    vault_key_file: str | None = None
    vault_public_key: str | None = None
    # set by the runtime for the uploaders only: this process may read the private key file
    vault_open_credentials: bool = False
    cron_secret: str | None = None
    # Pools.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=256)] = 2
    uploaders: Annotated[int, msgspec.Meta(ge=0, le=256)] = 2
    # Ingest micro-batching and backpressure.
    batch_max_events: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 256
    batch_max_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 3.0
    partition_max_inflight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    partition_call_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    # events waiting for a partition beyond this -> 503 + Retry-After (bounded memory)
    partition_max_queued_events: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4096
    # how long the gateway trusts its copy of a site's origins, ingest key and rate limit
    ingest_site_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    # behind a reverse proxy: take the client ip from the first X-Forwarded-For entry
    ingest_trust_forwarded_for: bool = False
    rate_limit_per_min: PositiveInt = 2000
    session_match_window_min: PositiveInt = 30
    # Signed call events: per (site, client) and per (site, fingerprint) token buckets.
    call_event_rate_limit_per_min: PositiveInt = 150
    call_event_fingerprint_rate_limit_per_min: PositiveInt = 20
    # database look-ups of call-event sites (cache misses, unknown ids) per client ip
    call_event_lookup_rate_limit_per_min: PositiveInt = 60
    # how long the gateway trusts its copy of a site's call-event secrets (a failed signature
    # re-reads them, so a rotation takes effect at once)
    call_event_site_cache_ttl_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    # PostgreSQL pools. Every pool is sized by opsmantik_stream.budget from the server's
    # max_connections (or db_max_connections, to use only a share of a server), keeping
    # db_reserved_connections free for the CLI, migrations and administrators; db_pool_max is
    # what a gateway pool wants when the budget allows it.
    db_pool_min: Annotated[int, msgspec.Meta(ge=0, le=100)] = 1
    db_pool_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    db_max_connections: Annotated[int, msgspec.Meta(ge=10, le=100_000)] | None = None
    db_reserved_connections: Annotated[int, msgspec.Meta(ge=2, le=1000)] = 5
    # gateway processes that share the database (each has its own pools)
    gateways: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # set by the runtime from the budget (not an environment variable)
    pool_plan: PoolPlan | None = None
    # Uploads.
    upload_chunk_size: Annotated[int, msgspec.Meta(ge=1, le=2000)] = 200
    upload_stale_after_s: PositiveInt = 900
    # Uploader pool (issue 6): breaker, leases, token bucket defaults, retry delays.
    upload_breaker_fail_max: PositiveInt = 5
    upload_breaker_open_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    upload_breaker_jitter_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    upload_breaker_probe_rows: PositiveInt = 5
    upload_site_concurrency: PositiveInt = 2
    upload_account_concurrency: PositiveInt = 10
    upload_request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    # must exceed the request timeout (plus a token refresh): checked by the uploader
    upload_lease_ttl_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    upload_retry_base_delay_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    upload_retry_jitter_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    upload_default_requests_per_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    upload_default_conversions_per_min: Annotated[float, msgspec.Meta(gt=0)] = 12000.0
    # allowance for jitter between the bucket and Google's clock (bucket rate / (1 + margin))
    upload_bucket_margin_s: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    upload_idle_poll_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    uploader_concurrency: Annotated[int, msgspec.Meta(ge=1, le=32)] = 4
    # /metrics: database figures cached this long per gateway; optionally a bearer token to
    # scrape, and/or a port of its own (127.0.0.1 only; the main port then answers 404)
    metrics_cache_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 15.0
    metrics_bearer_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    metrics_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def with_overrides(self, **changes: Any) -> Settings:
        return msgspec.structs.replace(self, **changes)


# computed at start-up, never read from the environment
_NOT_FROM_ENV = frozenset({"pool_plan", "vault_open_credentials"})


def _field_names() -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(Settings) if f.name not in _NOT_FROM_ENV)


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read ``OPSMANTIK_*`` variables (plus explicit overrides) into validated ``Settings``."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for name in _field_names():
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc))) from None
    if settings.db_pool_min > settings.db_pool_max:
        raise ConfigError(f"{ENV_PREFIX}DB_POOL_MIN: must not exceed {ENV_PREFIX}DB_POOL_MAX")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR")
    for name in ("database_url", "api_database_url", "gateway_database_url"):
        value = getattr(settings, name)
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected a postgresql:// URL")
    return settings


def _explain(message: str) -> str:
    # msgspec says e.g. "Expected `int` >= 1 - at `$.port`"; turn the path into the variable.
    text, _, path = message.rpartition(" - at `$.")
    if not text:
        return message
    field = path.rstrip("`")
    return f"{ENV_PREFIX}{field.upper()}: {text[0].lower()}{text[1:]}".replace("`", "")
