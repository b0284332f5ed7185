"""Settings: one validated object read once from ``OPSMANTIK_*`` environment variables.

Every knob has its unit in its name (``batch_max_wait_ms``).  A bad value stops start-up with
one line that names the variable, e.g. ``OPSMANTIK_PORT: expected an integer >= 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

from opsmantik_stream.poolplan import PoolPlan

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "doc", "load_settings"]

ENV_PREFIX = "OPSMANTIK_"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
# scheme://host[:port][/path]: no query, fragment or whitespace
HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$", max_length=500)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


def doc(text: str) -> msgspec.Meta:
    """A setting's description (docs/configuration.md is generated from it)."""
    return msgspec.Meta(description=text)


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Every setting, with its ``doc(...)``: docs/configuration.md is generated from these
    (``make docs``) and a test fails when a setting has no description."""

    # Where the data lives.
    database_url: Annotated[
        str | None,
        doc(
            "PostgreSQL to use, as a `postgresql://user:password@host:5432/dbname` URL, logging in as the schema "
            "owner `opsmantik_owner` (not a superuser; docs/security.md): migrations, actors and the CLI use it. "
            "Unset: an embedded PostgreSQL (pgserver) in `OPSMANTIK_DATA_DIR/pg` that listens on a unix socket only "
            "(its superuser only creates the roles)."
        ),
    ] = None
    api_database_url: Annotated[
        str | None,
        doc(
            "Login of the non-owner role `opsmantik_api` that runs API queries under row-level security. "
            "Unset: `OPSMANTIK_DATABASE_URL` with that user and no password, which is enough for the embedded server; "
            "set it, with a password, for an external server."
        ),
    ] = None
    gateway_database_url: Annotated[
        str | None,
        doc(
            "Login of the narrow role `opsmantik_gateway` for the gateway's own queries (token resolution, "
            "call-event secrets, credential writes, `/metrics`, `/ops`). Unset: `OPSMANTIK_DATABASE_URL` with that "
            "user and no password (embedded server); set it, with a password, for an external server."
        ),
    ] = None
    data_dir: Annotated[
        str,
        doc(
            "Folder of the embedded PostgreSQL (`pg/`) and the address of the local Ray (`ray.address`, for "
            "`status` and `scale` in another shell). The vault key is kept elsewhere (`OPSMANTIK_VAULT_KEY_FILE`)."
        ),
    ] = ".opsmantik"
    ray_address: Annotated[
        str | None,
        doc(
            "A running Ray cluster to join (`HOST:PORT` of its head). Unset: a local Ray on 127.0.0.1, "
            "started and stopped by `opsmantik serve`."
        ),
    ] = None
    ray_num_cpus: Annotated[
        int,
        msgspec.Meta(ge=1, le=256),
        doc(
            "CPUs a local Ray advertises (sizes Ray's worker pool; the actors reserve none). "
            "Ignored with `OPSMANTIK_RAY_ADDRESS`."
        ),
    ] = 8
    ray_namespace: Annotated[
        str,
        doc("Ray namespace of this stack's named actors; two stacks sharing one Ray cluster need two namespaces."),
    ] = "opsmantik"
    # HTTP gateway.
    host: Annotated[
        str, doc("Address the gateway listens on; keep 127.0.0.1 behind a reverse proxy on the same machine.")
    ] = "127.0.0.1"
    port: Annotated[Port, doc("Port the gateway listens on.")] = 8000
    public_url: Annotated[
        str | None,
        doc(
            "The gateway's address as browsers reach it, e.g. `https://track.example.com` behind a reverse "
            "proxy; printed in the tracker snippet of `opsmantik site create`. Unset: `http://OPSMANTIK_HOST:OPSMANTIK_PORT`."
        ),
    ] = None
    # Secrets.
    vault_key: Annotated[
        str | None,
        doc(
            "Base64 of the 32-byte Curve25519 private key of the credential vault; only the uploaders receive it. "
            "Unset: the key file `OPSMANTIK_VAULT_KEY_FILE`. Back it up apart from the database."
        ),
    ] = None
    vault_key_file: Annotated[
        str | None,
        doc(
            "File of the vault's private key (mode 0600, its public key beside it as `.pub`), generated on the "
            "first `serve`. Unset: `$XDG_CONFIG_HOME/opsmantik/vault.key` (`~/.config/opsmantik/vault.key`), "
            "outside the data folder; a key still at `OPSMANTIK_DATA_DIR/vault.key` is used with a warning."
        ),
    ] = None
    vault_public_key: Annotated[
        str | None,
        doc(
            "Base64 public key the gateway seals credentials with. Unset: derived from `OPSMANTIK_VAULT_KEY`, or "
            "read from the `.pub` file beside the key file."
        ),
    ] = None
    vault_open_credentials: Annotated[
        bool,
        doc(
            "Internal, set by the runtime for the uploaders only (never read from the environment): this process "
            "may read the private key file to open credentials."
        ),
    ] = False
    cron_secret: Annotated[
        str | None,
        doc(
            "Secret that external schedulers send to `POST /api/jobs/{name}` (`X-Cron-Secret` or bearer). "
            "Unset: that endpoint answers 403 (the Maintenance actor runs the jobs anyway)."
        ),
    ] = None
    # Pools.
    partitions: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=256)] | None,
        doc(
            "SitePartition actors on the first start; afterwards the Registry keeps the size (`opsmantik scale`). "
            "Unset: one per two cores (a partition and its share of PostgreSQL take about a core, and the "
            "gateway needs one too)."
        ),
    ] = None
    uploaders: Annotated[
        int,
        msgspec.Meta(ge=0, le=256),
        doc("Uploader actors on the first start (0: nothing is uploaded); afterwards kept by the Registry."),
    ] = 2
    # Ingest micro-batching and backpressure.
    batch_max_events: Annotated[
        int,
        msgspec.Meta(ge=1, le=5000),
        doc("Ingest micro-batching: a partition call leaves once this many events wait for it."),
    ] = 512
    batch_max_bytes: Annotated[
        int,
        msgspec.Meta(ge=1024, le=1_000_000),
        doc(
            "Ingest micro-batching: a partition call leaves once its events take this many bytes (bounds a "
            "call's memory; over a Ray call, arguments above ~100 KB travel through Ray's object store)."
        ),
    ] = 256_000
    batch_max_wait_ms: Annotated[
        float,
        msgspec.Meta(ge=0, le=1000),
        doc(
            "Ingest micro-batching: while a call is in flight, the next one leaves at the latest when its first "
            "event waited this long (an idle partition gets events at once)."
        ),
    ] = 5.0
    batch_min_interval_ms: Annotated[
        float,
        msgspec.Meta(ge=0, le=1000),
        doc(
            "Ingest micro-batching: a partition call of fewer than OPSMANTIK_BATCH_SMALL_CALL_EVENTS events "
            "leaves at the earliest this long after the partition's previous call left (0: as soon as a slot "
            "is free). Fewer, larger calls at moderate load: a call's fixed cost (the Ray call, the transaction, "
            "each statement's start-up) is about that of thirty events."
        ),
    ] = 12.0
    batch_small_call_events: Annotated[
        int,
        msgspec.Meta(ge=1, le=5000),
        doc(
            "Ingest micro-batching: a call of at least this many events leaves as soon as a slot is free; a "
            "smaller one waits out OPSMANTIK_BATCH_MIN_INTERVAL_MS."
        ),
    ] = 40
    partition_max_inflight: Annotated[
        int,
        msgspec.Meta(ge=1, le=64),
        doc(
            "Calls in flight per partition; events that arrive meanwhile wait and leave together. One is "
            "fastest: a partition call and its transaction cost about as much as thirty events, so under load "
            "fewer, larger calls leave more CPU for events."
        ),
    ] = 1
    partition_call_timeout_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=300),
        doc("How long the gateway waits for a partition call before answering 503 (a retry is idempotent)."),
    ] = 30.0
    partition_local_socket: Annotated[
        bool,
        doc(
            "A gateway sends ingest batches to a partition on the same machine over the partition's Unix socket "
            "instead of a Ray call (Ray still places, restarts and finds it). Off: always Ray calls."
        ),
    ] = True
    partition_db_connections: Annotated[
        int,
        msgspec.Meta(ge=1, le=32),
        doc("PostgreSQL connections each partition writes ingest batches on (batches of different sites in parallel)."),
    ] = 2
    partition_max_queued_events: Annotated[
        int,
        msgspec.Meta(ge=1, le=1_000_000),
        doc("Events waiting for a partition beyond this get 503 + `Retry-After` at once (bounded memory)."),
    ] = 4096
    ingest_site_cache_ttl_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600),
        doc("How long a gateway trusts its copy of a site's origins, ingest key and rate limit."),
    ] = 10.0
    trusted_proxies: Annotated[
        str,
        doc(
            "Reverse proxies whose `X-Forwarded-For` is believed, as comma-separated addresses or networks "
            "(`127.0.0.1,10.0.0.0/8`): the client is the right-most address not in this list. Empty: the TCP "
            "peer is the client."
        ),
    ] = ""
    rate_limit_per_min: Annotated[
        PositiveInt,
        doc(
            "Ingest rate limit in events per minute per (site, client address: IPv4, or IPv6 /64), unless the "
            "site's plan sets its own."
        ),
    ] = 2000
    site_rate_limit_per_min: Annotated[
        PositiveInt,
        doc("Ingest rate limit in events per minute per site, whatever the clients (never below the per-client one)."),
    ] = 120_000
    session_match_window_min: Annotated[
        PositiveInt, doc("A call event joins the newest session of its fingerprint that is at most this old.")
    ] = 30
    # Signed call events: per (site, client) and per (site, fingerprint) token buckets.
    call_event_rate_limit_per_min: Annotated[PositiveInt, doc("Signed call events per (site, client) and minute.")] = (
        150
    )
    call_event_fingerprint_rate_limit_per_min: Annotated[
        PositiveInt, doc("Signed call events per (site, fingerprint) and minute.")
    ] = 20
    call_event_lookup_rate_limit_per_min: Annotated[
        PositiveInt,
        doc(
            "Database look-ups of call-event sites (cache misses, unknown ids) per client address and minute; "
            "beyond it the request answers 429 without a query."
        ),
    ] = 60
    call_event_site_cache_ttl_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600),
        doc(
            "How long the gateway trusts its copy of a site's call-event secrets (a failing signature re-reads "
            "them, so a rotation takes effect at once); unknown ids are remembered 5 s."
        ),
    ] = 10.0
    # PostgreSQL pools.
    db_pool_min: Annotated[
        int, msgspec.Meta(ge=0, le=100), doc("Connections the gateway keeps open to PostgreSQL.")
    ] = 1
    db_pool_max: Annotated[
        int,
        msgspec.Meta(ge=1, le=200),
        doc(
            "Connections a gateway pool (service and API role each) wants; the connection budget may give it less. "
            "Partition and uploader pools are sized by the budget (docs/reliability.md)."
        ),
    ] = 10
    db_max_connections: Annotated[
        Annotated[int, msgspec.Meta(ge=10, le=100_000)] | None,
        doc(
            "Connections the stack may use in total, to share a PostgreSQL server with other applications. "
            "Unset: the server's `max_connections`. A size that cannot fit is refused (`opsmantik scale`: exit 2)."
        ),
    ] = None
    db_reserved_connections: Annotated[
        int,
        msgspec.Meta(ge=2, le=1000),
        doc("Connections the budget keeps free for the CLI, migrations, backups and an administrator's psql."),
    ] = 5
    gateways: Annotated[
        int, msgspec.Meta(ge=1, le=64), doc("Gateway processes that share the database (each has its own pools).")
    ] = 1
    pool_plan: Annotated[
        PoolPlan | None,
        doc("Internal, set by the runtime from the connection budget (never read from the environment)."),
    ] = None
    # Uploads.
    upload_chunk_size: Annotated[
        int, msgspec.Meta(ge=1, le=2000), doc("Conversions per Google request (Google accepts at most 2,000).")
    ] = 200
    upload_stale_after_s: Annotated[
        PositiveInt,
        doc("A queue row `PROCESSING` for longer than this is rescued (back to `RETRY` through the retry policy)."),
    ] = 900
    # Uploader pool: breaker, leases, token bucket defaults, retry delays.
    upload_breaker_fail_max: Annotated[
        PositiveInt, doc("Transient failures in a row that open a site's circuit breaker.")
    ] = 5
    upload_breaker_open_s: Annotated[
        float, msgspec.Meta(ge=0), doc("How long an open breaker waits before it admits a probe batch.")
    ] = 300.0
    upload_breaker_jitter_s: Annotated[
        float, msgspec.Meta(ge=0), doc("Up to this much random extra wait, so sites do not probe at once.")
    ] = 60.0
    upload_breaker_probe_rows: Annotated[PositiveInt, doc("Rows in a half-open breaker's probe batch.")] = 5
    upload_site_concurrency: Annotated[
        PositiveInt, doc("Uploads in flight per site across the whole pool (leases in PostgreSQL).")
    ] = 2
    upload_account_concurrency: Annotated[
        PositiveInt, doc("Uploads in flight per destination account across the whole pool.")
    ] = 10
    upload_request_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300), doc("Timeout of one request to Google.")] = (
        30.0
    )
    upload_lease_ttl_s: Annotated[
        float,
        msgspec.Meta(gt=0),
        doc("Expiry of an upload lease; must exceed the request timeout (an uploader refuses to start otherwise)."),
    ] = 120.0
    upload_retry_base_delay_s: Annotated[
        float,
        msgspec.Meta(ge=0),
        doc("First retry delay after a transient failure; it doubles per attempt, up to a day."),
    ] = 300.0
    upload_retry_jitter_s: Annotated[float, msgspec.Meta(ge=0), doc("Up to this much random extra retry delay.")] = 60.0
    upload_default_requests_per_s: Annotated[
        float,
        msgspec.Meta(gt=0),
        doc("Requests per second per destination account when its credentials set none (shared by the pool)."),
    ] = 10.0
    upload_default_conversions_per_min: Annotated[
        float,
        msgspec.Meta(gt=0),
        doc("Conversions per minute per destination account when its credentials set none (shared by the pool)."),
    ] = 12000.0
    upload_bucket_margin_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=1),
        doc(
            "Allowance for jitter between a send leaving and Google counting it: the pool sends at most"
            " rate / (1 + margin) (97 % of the budget at 0.03)."
        ),
    ] = 0.03
    upload_idle_poll_s: Annotated[
        float, msgspec.Meta(gt=0, le=60), doc("How often an idle uploader looks for due rows.")
    ] = 0.5
    uploader_concurrency: Annotated[
        int, msgspec.Meta(ge=1, le=32), doc("Batches one uploader actor works on at once.")
    ] = 4
    upload_gate_ledger_interval_s: Annotated[
        float,
        msgspec.Meta(ge=0),
        doc(
            "At most one ledger entry per (site, destination) and this many seconds for attempts held back by an "
            "open breaker, another uploader's probe or a paused account (no attempt is spent on them)."
        ),
    ] = 60.0
    # Google's endpoints are deployment settings, never tenant input (a tenant must not choose
    # where the uploader sends a site's OAuth secrets).
    google_ads_base_url: Annotated[
        HttpUrl,
        doc(
            "Base URL of the Google Ads API (a deployment setting, never tenant input); point it at "
            "`opsmantik emulator` for tests and demos."
        ),
    ] = "https://googleads.googleapis.com"
    google_ads_api_version: Annotated[
        str, msgspec.Meta(pattern=r"^v\d+(_\d+)?$"), doc("Google Ads API version in request paths, e.g. `v26`.")
    ] = "v26"
    data_manager_base_url: Annotated[
        HttpUrl,
        doc(
            "Base URL of the Google Data Manager API (a deployment setting, never tenant input); point it at "
            "`opsmantik emulator` for tests and demos."
        ),
    ] = "https://datamanager.googleapis.com"
    google_token_url: Annotated[
        HttpUrl,
        doc(
            "Google's OAuth token endpoint, where the uploader exchanges a site's refresh token (a deployment "
            "setting, never tenant input); point it at `opsmantik emulator` for tests and demos."
        ),
    ] = "https://oauth2.googleapis.com/token"
    privacy_retention_days: Annotated[
        int,
        msgspec.Meta(ge=30, le=365),
        doc("The privacy_retention job anonymises data of sessions without consent older than this many days."),
    ] = 90
    privacy_dead_letter_days: Annotated[
        int,
        msgspec.Meta(ge=1, le=365),
        doc("The privacy_retention job redacts dead-letter payloads older than this many days."),
    ] = 30
    privacy_retention_batch: Annotated[
        int,
        msgspec.Meta(ge=1, le=10_000),
        doc("Rows the privacy_retention job anonymises per transaction (short locks, bounded work)."),
    ] = 500
    consent_rate_limit_per_min: Annotated[
        PositiveInt, doc("Signed consent updates (`POST /api/consent`) per (site, client) and minute.")
    ] = 600
    metrics_cache_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=3600),
        doc("`/metrics` reads its database figures at most this often per gateway (scrapes in between get the copy)."),
    ] = 15.0
    metrics_bearer_token: Annotated[
        Annotated[str, msgspec.Meta(min_length=16)] | None,
        doc("When set, `/metrics` needs `Authorization: Bearer <this token>`."),
    ] = None
    metrics_port: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=65535)] | None,
        doc("When set, `/metrics` is served alone on 127.0.0.1:this port, and the main port answers 404 for it."),
    ] = None
    console_link_ttl_s: Annotated[
        int,
        msgspec.Meta(ge=60, le=7 * 86400),
        doc("How long a console sign-in link printed by `opsmantik console link` stays valid (it works once)."),
    ] = 900
    console_session_ttl_s: Annotated[
        int,
        msgspec.Meta(ge=300, le=30 * 86400),
        doc("How long a console session (its HttpOnly cookie and the token behind it) lasts."),
    ] = 12 * 3600
    alert_webhook_url: Annotated[
        str | None,
        doc(
            "Watchtower alerts are posted here as JSON with a Slack-compatible `text` (a deployment setting, "
            "never tenant input). Unset: alerts are only stored and shown."
        ),
    ] = None
    alert_webhook_timeout_s: Annotated[
        float, msgspec.Meta(gt=0, le=60), doc("Timeout of one alert webhook request (failures are retried later).")
    ] = 5.0
    watchtower_traffic_min_sessions: Annotated[
        PositiveInt,
        doc(
            '"No sessions in the last hour" only alerts for a site that had at least this many sessions in the '
            "24 hours before."
        ),
    ] = 24
    watchtower_click_min_sessions: Annotated[
        PositiveInt,
        doc(
            '"No click ids in 3 h" only alerts for a site that had at least this many sessions with click ids '
            "in the 7 days before."
        ),
    ] = 56
    watchtower_queue_age_max_s: Annotated[
        PositiveInt, doc("The oldest due upload row may wait this long before the queue counts as stalled.")
    ] = 3600
    log_level: Annotated[
        str,
        doc(
            "`DEBUG`, `INFO`, `WARNING` or `ERROR`: JSON lines on stderr from the gateway and every actor "
            "(never phone numbers, emails, fingerprints, tokens or secrets)."
        ),
    ] = "INFO"

    @property
    def partition_count(self) -> int:
        """``partitions``, or one per two cores when unset."""
        return self.partitions if self.partitions is not None else max(1, (os.cpu_count() or 2) // 2)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def with_overrides(self, **changes: Any) -> Settings:
        return msgspec.structs.replace(self, **changes)


# computed at start-up for each actor, never read from the environment
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
    if settings.public_url is not None and not settings.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"{ENV_PREFIX}PUBLIC_URL: expected an http:// or https:// URL")
    if settings.alert_webhook_url is not None and not settings.alert_webhook_url.startswith(("http://", "https://")):
        raise ConfigError(f"{ENV_PREFIX}ALERT_WEBHOOK_URL: expected an http:// or https:// URL")
    return settings


def _explain(message: str) -> str:
    # msgspec says e.g. "Expected `int` >= 1 - at `$.port`"; turn the path into the variable.
    text, _, path = message.rpartition(" - at `$.")
    if not text:
        return message
    field = path.rstrip("`")
    return f"{ENV_PREFIX}{field.upper()}: {text[0].lower()}{text[1:]}".replace("`", "")
