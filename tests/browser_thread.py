"""One headless Chromium per test module, driven with Playwright's async API.

Playwright objects belong to the event loop that created them, while every test runs in a
loop of its own (pytest-asyncio, function scope). So the browser lives on a dedicated loop in
a background thread for the whole module, and a test awaits Playwright calls through it:
``await bt(page.goto(url))`` runs the coroutine on the browser's loop and waits for it
without blocking the test's loop (its database calls go on meanwhile).

Chromium is Debian's (``tests.cdp.ensure_chromium``, via ``executable_path``): no browser
download. Every host name but 127.0.0.1 resolves to nothing, so a page never reaches the
network.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

__all__ = ["BrowserThread", "PageLog", "module_browser", "until"]

T = TypeVar("T")


@dataclass
class PageLog:
    """What a page said and asked for (filled on the browser's loop)."""

    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def warnings(self, needle: str) -> list[str]:
        return [text for kind, text in self.console if needle in text]

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and path in r["url"]]


class BrowserThread:
    """A Playwright Chromium on its own event loop in a daemon thread."""

    def __init__(self, executable: str) -> None:
        self._executable = executable
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="playwright", daemon=True)
        self._pw: Any = None
        self.browser: Any = None

    def start(self) -> BrowserThread:
        self._thread.start()
        self._run(self._launch(), timeout_s=120)
        return self

    async def _launch(self) -> None:
        from playwright.async_api import async_playwright

        self._pw = await async_playwright().start()
        self.browser = await self._pw.chromium.launch(
            executable_path=self._executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        )

    def close(self) -> None:
        async def stop() -> None:
            if self.browser is not None:
                await self.browser.close()
            if self._pw is not None:
                await self._pw.stop()

        try:
            self._run(stop(), timeout_s=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def __call__(self, awaitable: Awaitable[T]) -> Awaitable[T]:
        """Run a Playwright coroutine on the browser's loop; await the result here."""

        async def wrapped() -> T:
            return await awaitable

        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wrapped(), self._loop))

    async def new_page(self) -> tuple[Any, PageLog]:
        """A page in a fresh context (its own storage), with its console and requests logged."""

        async def make() -> tuple[Any, PageLog]:
            log = PageLog()
            context = await self.browser.new_context()
            page = await context.new_page()
            page.on("console", lambda m: log.console.append((m.type, m.text)))
            page.on(
                "request",
                lambda r: log.requests.append(
                    {"url": r.url, "method": r.method, "body": r.post_data, "type": r.resource_type}
                ),
            )
            return page, log

        return await self(make())

    async def close_page(self, page: Any) -> None:
        await self(page.context.close())


@pytest.fixture(scope="module", name="bt")
def module_browser() -> Iterator[BrowserThread]:
    """The fixture ``bt``: one browser per test module (import ``module_browser`` there)."""
    from tests.cdp import ensure_chromium

    binary, reason = ensure_chromium()
    if binary is None:
        pytest.fail(f"headless Chromium unavailable: {reason}")
    browser = BrowserThread(binary).start()
    try:
        yield browser
    finally:
        browser.close()


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout_s: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy (a browser works on its own)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
