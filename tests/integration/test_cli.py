"""The `opsmantik` command line against a real database: --json output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

pytestmark = pytest.mark.integration


def run(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPSMANTIK_DATABASE_URL": db_url,
        "OPSMANTIK_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def test_site_and_token_lifecycle(db_url: str, tmp_path: Path, pool: asyncpg.Pool) -> None:
    site = as_json(
        run(
            db_url,
            tmp_path,
            "site",
            "create",
            "--name",
            "Shop",
            "--domain",
            "shop.example.com",
            "--origin",
            "https://www.shop.example.com",
            "--json",
        )
    )
    assert set(site) >= {"public_id", "site_id", "secret"}
    assert len(site["public_id"]) == 32
    assert site["origins"] == ["https://shop.example.com", "https://www.shop.example.com"]

    listed = as_json(run(db_url, tmp_path, "site", "list", "--json"))
    assert [s["public_id"] for s in listed["sites"]] == [site["public_id"]]

    added = as_json(
        run(
            db_url,
            tmp_path,
            "site",
            "origins",
            "add",
            site["public_id"],
            "https://m.shop.example.com",
            "--json",
        )
    )
    assert "https://m.shop.example.com" in added["origins"]

    rotated = as_json(run(db_url, tmp_path, "site", "secret", "rotate", site["public_id"], "--json"))
    assert rotated["secret"] != site["secret"]

    token = as_json(
        run(
            db_url,
            tmp_path,
            "token",
            "create",
            "--user",
            "Op@Example.com",
            "--site",
            site["public_id"],
            "--role",
            "operator",
            "--json",
        )
    )
    assert token["token"].startswith("opsm_")
    assert token["email"] == "op@example.com"
    stored = await pool.fetchval(
        "SELECT count(*) FROM private.api_tokens WHERE token_sha256 = encode(sha256($1::bytea), 'hex')",
        token["token"].encode(),
    )
    assert stored == 1

    text = run(db_url, tmp_path, "site", "list")
    assert text.returncode == 0 and site["public_id"] in text.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["site", "origins", "add", "0" * 32, "https://x.com"], 1, "no site with public id"),
        (["site", "secret", "rotate", "nope"], 1, "no site with public id"),
        (["token", "create", "--user", "a@b.c", "--site", "0" * 32, "--role", "operator"], 1, "no site"),
        (["token", "create", "--user", "not-an-email", "--platform-admin"], 1, "not an email"),
        (["token", "create", "--user", "a@b.c", "--site", "x", "--role", "king"], 2, "invalid choice"),
        (["site", "create", "--name", "x"], 2, "--domain"),
        (["site", "create", "--name", "x", "--domain", "ftp://x"], 1, "origin"),
        (["frobnicate"], 2, "invalid choice"),
        (["migrate", "--bogus"], 2, "unrecognized arguments"),
    ],
)
async def test_bad_input_gets_one_error_line_and_changes_nothing(
    db_url: str, tmp_path: Path, pool: asyncpg.Pool, args: list[str], code: int, needle: str
) -> None:
    before = await pool.fetchval("SELECT (SELECT count(*) FROM sites) + (SELECT count(*) FROM users)")
    proc = run(db_url, tmp_path, *args)
    assert proc.returncode == code
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1, proc.stderr
    assert needle in error_lines[0]
    after = await pool.fetchval("SELECT (SELECT count(*) FROM sites) + (SELECT count(*) FROM users)")
    assert after == before


def test_every_command_has_help() -> None:
    commands = [
        [],
        ["serve"],
        ["migrate"],
        ["site"],
        ["site", "create"],
        ["site", "list"],
        ["site", "origins", "add"],
        ["site", "secret", "rotate"],
        ["token", "create"],
        ["status"],
        ["emulator"],
        ["sale", "cancel"],
        ["sale", "restate"],
        ["site", "credentials", "test"],
        ["site", "enhanced-conversions", "set"],
    ]
    for cmd in commands:
        proc = subprocess.run(
            [sys.executable, "-m", "opsmantik_stream.cli", *cmd, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert "usage: opsmantik" in proc.stdout


def test_bad_configuration_stops_with_the_variable_named(tmp_path: Path) -> None:
    env = {**os.environ, "OPSMANTIK_PORT": "eighty", "OPSMANTIK_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "opsmantik_stream.cli", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["opsmantik: error: OPSMANTIK_PORT: expected int, got str"]


def test_migrate_twice_is_a_no_op(db_url: str, tmp_path: Path) -> None:
    first = as_json(run(db_url, tmp_path, "migrate", "--json"))
    assert first["applied"] == []  # the template is migrated already
    again = as_json(run(db_url, tmp_path, "migrate", "--json"))
    assert again == first


def test_migrate_refuses_a_gap_or_a_changed_file_with_one_line(db_url: str, tmp_path: Path) -> None:
    import shutil

    from opsmantik_stream.migrate import default_migrations_dir

    gap = tmp_path / "gap"
    shutil.copytree(default_migrations_dir(), gap)
    sorted(gap.glob("0003_*.sql"))[0].unlink()
    proc = run(db_url, tmp_path, "migrate", "--dir", str(gap))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "gap" in proc.stderr

    changed = tmp_path / "changed"
    shutil.copytree(default_migrations_dir(), changed)
    first = sorted(changed.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- changed\n")
    proc = run(db_url, tmp_path, "migrate", "--dir", str(changed))
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "changed after it was applied" in proc.stderr
