"""The tracker snippet printed by `opsmantik site create` works as pasted: the CLI prints it
for the gateway's public address, the test pastes it unchanged into a page of the site, and a
real headless Chromium that opens the page stores the page view (with the consent the snippet
declares) in PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.cdp import Browser, ensure_chromium
from tests.serving import until

pytestmark = pytest.mark.e2e


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def site_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static web site on its own loopback origin, served from a folder (like any host)."""
    folder = tmp_path / "site"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(900)  # the first run may install chromium
async def test_the_printed_snippet_works_when_pasted(
    live_server: str, db_url: str, tmp_path: Path, site_folder: tuple[str, Path], pool: asyncpg.Pool
) -> None:
    binary, reason = ensure_chromium()
    assert binary is not None, f"headless Chromium unavailable: {reason}"
    origin, folder = site_folder
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPSMANTIK_")},
        "OPSMANTIK_DATABASE_URL": db_url,
        "OPSMANTIK_DATA_DIR": str(tmp_path / "data"),
        "OPSMANTIK_PUBLIC_URL": live_server,
    }
    created = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "opsmantik_stream.cli", "site", "create", "--name", "Pasted", "--domain", origin],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    (snippet,) = [line for line in lines if line.startswith("<script ")]
    public_id = next(line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("public_id:"))
    assert f'src="{live_server}/assets/core.js"' in snippet and 'data-consent="analytics,marketing"' in snippet
    assert any(line.startswith("consent:") and "analytics" in line for line in lines)

    (folder / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>Pasted</title></head>"
        f"<body><h1>Our shop</h1>\n{snippet}\n</body></html>"
    )

    async def stored_view() -> Any:
        return await pool.fetchrow(
            "SELECT e.event_action, s.consent_scopes FROM events e JOIN sessions s ON s.id = e.session_id"
            " JOIN sites t ON t.id = e.site_id WHERE t.public_id = $1 AND e.event_action = 'view'",
            public_id,
        )

    async with Browser(binary) as browser:
        await browser.navigate(f"{origin}/index.html")
        view = await until(stored_view, "the page view of the pasted snippet")
    assert view["consent_scopes"] == ["analytics", "marketing"]
