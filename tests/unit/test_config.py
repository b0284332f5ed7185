"""Settings: defaults, parsing from OPSMANTIK_* variables, one-line errors naming the variable."""

from __future__ import annotations

import os

import pytest

from opsmantik_stream.config import ConfigError, load_settings

pytestmark = pytest.mark.unit


def test_defaults_bind_loopback_and_embed_the_database() -> None:
    s = load_settings(environ={})
    assert s.host == "127.0.0.1"
    assert s.port == 8000
    assert s.database_url is None
    assert s.ray_address is None
    # partitions: one per two cores unless set
    assert s.partitions is None and s.partition_count == max(1, (os.cpu_count() or 2) // 2)
    assert load_settings(environ={"OPSMANTIK_PARTITIONS": "3"}).partition_count == 3


def test_values_come_from_prefixed_variables() -> None:
    s = load_settings(
        environ={
            "OPSMANTIK_PORT": "9001",
            "OPSMANTIK_PARTITIONS": "4",
            "OPSMANTIK_BATCH_MAX_WAIT_MS": "2.5",
            "OPSMANTIK_DATABASE_URL": "postgresql://u@localhost/db",
            "PORT": "1",  # unprefixed variables are ignored
        }
    )
    assert (s.port, s.partitions, s.batch_max_wait_ms) == (9001, 4, 2.5)
    assert s.database_url == "postgresql://u@localhost/db"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OPSMANTIK_PORT": "abc"}, "OPSMANTIK_PORT"),
        ({"OPSMANTIK_PORT": "70000"}, "OPSMANTIK_PORT"),
        ({"OPSMANTIK_PARTITIONS": "0"}, "OPSMANTIK_PARTITIONS"),
        ({"OPSMANTIK_DATABASE_URL": "mysql://x"}, "OPSMANTIK_DATABASE_URL"),
        ({"OPSMANTIK_LOG_LEVEL": "LOUD"}, "OPSMANTIK_LOG_LEVEL"),
        ({"OPSMANTIK_DB_POOL_MIN": "20", "OPSMANTIK_DB_POOL_MAX": "5"}, "OPSMANTIK_DB_POOL_MIN"),
        ({"OPSMANTIK_GOOGLE_ADS_BASE_URL": "ftp://example.com"}, "OPSMANTIK_GOOGLE_ADS_BASE_URL"),
        ({"OPSMANTIK_GOOGLE_TOKEN_URL": "https://oauth2.googleapis.com/token?x=1"}, "OPSMANTIK_GOOGLE_TOKEN_URL"),
        ({"OPSMANTIK_GOOGLE_ADS_API_VERSION": "26"}, "OPSMANTIK_GOOGLE_ADS_API_VERSION"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env)
    message = str(info.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_google_endpoints_are_deployment_settings_with_googles_defaults() -> None:
    s = load_settings(environ={})
    assert s.google_ads_base_url == "https://googleads.googleapis.com"
    assert s.data_manager_base_url == "https://datamanager.googleapis.com"
    assert s.google_token_url == "https://oauth2.googleapis.com/token"
    emu = load_settings(environ={"OPSMANTIK_GOOGLE_ADS_BASE_URL": "http://127.0.0.1:8790"})
    assert emu.google_ads_base_url == "http://127.0.0.1:8790"
