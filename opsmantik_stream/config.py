"""Settings: one validated object read once from ``OPSMANTIK_*`` environment variables.

Every knob has its unit in its name (``batch_max_wait_ms``).  A bad value stops start-up with
one line that names the variable, e.g. ``OPSMANTIK_PORT: expected an integer >= 1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "OPSMANTIK_"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # Where the data lives. No URL -> an embedded PostgreSQL (pgserver) in data_dir/pg.
    database_url: str | None = None
    # API queries log in as the non-owner role opsmantik_api. Default: database_url with that
    # user and no password (enough for the embedded server's local trust authentication).
    api_database_url: str | None = None
    data_dir: str = ".opsmantik"
    # Ray: no address -> a local Ray bound to 127.0.0.1.
    ray_address: str | None = None
    ray_num_cpus: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8
    # Actors are named within this namespace; tests give each stack its own.
    ray_namespace: str = "opsmantik"
    # HTTP gateway.
    host: str = "127.0.0.1"
    port: Port = 8000
    # Secrets. vault_key: base64 of a 32-byte Curve25519 private key; generated into
    # data_dir/vault.key on first start when not given.
    vault_key: str | None = None
    cron_secret: str | None = None
    # Pools.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=256)] = 2
    uploaders: Annotated[int, msgspec.Meta(ge=0, le=256)] = 2
    # Ingest micro-batching and backpressure.
    batch_max_events: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 256
    batch_max_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 3.0
    partition_max_inflight: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    partition_call_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 30.0
    rate_limit_per_min: PositiveInt = 2000
    session_match_window_min: PositiveInt = 30
    # PostgreSQL pools.
    db_pool_min: Annotated[int, msgspec.Meta(ge=0, le=100)] = 1
    db_pool_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    # Uploads.
    upload_chunk_size: Annotated[int, msgspec.Meta(ge=1, le=2000)] = 200
    upload_stale_after_s: PositiveInt = 900
    log_level: str = "INFO"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def with_overrides(self, **changes: Any) -> Settings:
        return msgspec.structs.replace(self, **changes)


def _field_names() -> tuple[str, ...]:
    return tuple(f.name for f in msgspec.structs.fields(Settings))


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
    if settings.database_url is not None and not settings.database_url.startswith(
        ("postgres://", "postgresql://")
    ):
        raise ConfigError(f"{ENV_PREFIX}DATABASE_URL: expected a postgresql:// URL")
    return settings


def _explain(message: str) -> str:
    # msgspec says e.g. "Expected `int` >= 1 - at `$.port`"; turn the path into the variable.
    text, _, path = message.rpartition(" - at `$.")
    if not text:
        return message
    field = path.rstrip("`")
    return f"{ENV_PREFIX}{field.upper()}: {text[0].lower()}{text[1:]}".replace("`", "")
