"""The chat page in Debian's chromium, driven by Playwright, against a real server:
first-boot setup with the console code -> send -> streamed reply -> stop -> reload keeps the
conversation -> safe markdown -> a second user cannot see it. Screenshots in test-artifacts/."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.accounts import PASSWORD
from tests.support.server import Server, start_server

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PAGE_BUDGET = 150 * 1024
HOSTILE = (
    "# Title\n\n- one\n- two\n\n```python\nprint('<b>hi</b>')\n```\n\n"
    '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> '
    "[link](javascript:alert(1)) **bold**"
)

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian chromium")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        tmp_path_factory.mktemp("browser"), env={"MONGARS_REPLY_MAX_TOKENS": "200"}
    )
    yield running
    running.stop(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def _admin(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token()}"}


def _conversation(server: Server, cid: int) -> dict[str, Any]:
    # The console principal is a different user: read through the store's owner instead.
    url = f"{server.url}/api/conversations/{cid}"
    return dict(httpx.get(url, headers=_admin(server), timeout=60).json())


def _insert_answer(server: Server, user: str, cid: int, text: str) -> None:
    from mongars_edge.datadir import DataDir
    from mongars_edge.memory.store import MemoryStore

    async def run() -> None:
        async with MemoryStore.open(DataDir(server.data_dir).database) as store:
            owner = await store.require_user(user)
            await store.add_turn(owner.id, cid, "show me markdown", text)

    # Playwright's sync API owns this thread's event loop: run the store in another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _track(page: Page) -> set[str]:
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
    return hosts


def _transferred(page: Page) -> int:
    """Bytes over the wire for the page so far (headers included), from Resource Timing."""
    total: int = page.evaluate(
        """() => performance.getEntriesByType('navigation')
             .concat(performance.getEntriesByType('resource'))
             .reduce((n, e) => n + (e.transferSize || e.encodedBodySize || 0), 0)"""
    )
    return total


def test_first_boot_chat_stop_reload_and_privacy(server: Server, browser: Browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    host = urlsplit(server.url).netloc
    desktop = browser.new_context(viewport={"width": 1280, "height": 800}, locale="fr-CA")
    page = desktop.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    hosts = _track(page)

    # First boot: the setup view asks for the code printed on the console.
    page.goto(server.url + "/")
    expect(page.locator("#code")).to_be_visible()
    page.wait_for_load_state("networkidle")
    first_load = _transferred(page)
    assert 10_000 < first_load <= PAGE_BUDGET, f"first load {first_load} bytes"
    expect(page.locator("#auth-submit")).to_have_text("Créer le compte")
    page.fill("#code", "WRONG-CODE")
    page.fill("#name", "ana")
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#auth-error")).not_to_be_empty()
    page.fill("#code", server.setup_code())
    page.click("#auth-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#speak-toggle")).to_be_hidden()
    expect(page.locator("#ptt")).to_be_hidden()
    assert page.evaluate("typeof window.mongars.send + typeof window.mongars.stop") == (
        "functionfunction"
    )

    # Send: the reply streams in, the page's events fire for voice.js.
    page.evaluate(
        """() => { window.seen = [];
        for (const n of ['stream-start', 'token', 'stream-end', 'stop'])
          document.addEventListener('mongars:' + n, (e) => window.seen.push([n, e.detail])); }"""
    )
    page.fill("#input", "Bonjour! Nomme trois fruits.")
    page.keyboard.press("Enter")
    answer = page.locator(".msg.assistant .body").last
    expect(answer).not_to_be_empty(timeout=30_000)
    expect(page.locator("#send")).to_be_visible(timeout=60_000)
    kinds = page.evaluate("window.seen.map((e) => e[0])")
    assert kinds[0] == "stream-start" and kinds[-1] == "stream-end" and "token" in kinds
    cid = page.evaluate("window.mongars.conversationId()")
    assert isinstance(cid, int)
    expect(page.locator("#conversations li")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "chat-desktop.png"))

    # Stop: cancels generation on the server; the turn is kept, marked partial.
    page.fill("#input", "Raconte-moi une très, très longue histoire de castor.")
    # Press stop at the first streamed token: on an idle box a 135M model can finish its whole
    # reply before a click from the test process would land.
    page.evaluate(
        """document.addEventListener('mongars:token',
             () => document.getElementById('stop').click(), {once: true})"""
    )
    page.keyboard.press("Enter")
    expect(page.locator(".msg.assistant .body").last).not_to_be_empty(timeout=30_000)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator(".msg.assistant").last).to_have_class("msg assistant partial")
    assert page.evaluate("window.seen.some((e) => e[0] === 'stop')")

    # Reload keeps the conversation (the partial answer too).
    page.wait_for_timeout(300)
    page.reload()
    expect(page.locator(".msg")).to_have_count(4)
    expect(page.locator(".msg.assistant.partial")).to_have_count(1)

    # Markdown renders safely: structure yes, HTML no.
    _insert_answer(server, "ana", cid, HOSTILE)
    page.reload()
    last = page.locator(".msg.assistant .body").last
    expect(last.locator("pre code")).to_have_text("print('<b>hi</b>')")
    expect(last.locator("li")).to_have_count(2)
    expect(last.locator("strong")).to_have_text("bold")
    assert last.locator("img, script, a[href^='javascript']").count() == 0
    assert page.evaluate("window.pwned") is None
    assert "<img src=x" in last.inner_text()
    assert errors == []
    assert hosts <= {host}, hosts

    # A second user, on a phone in English, sees none of it.
    made = httpx.post(
        server.url + "/api/users",
        json={"name": "bob", "password": PASSWORD},
        headers=_admin(server),
        timeout=60,
    )
    assert made.status_code == 201
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US"
    )
    bob = phone.new_page()
    bob.goto(server.url + f"/#c={cid}")
    expect(bob.locator("#auth-submit")).to_have_text("Sign in")
    bob.fill("#name", "bob")
    bob.fill("#password", PASSWORD)
    bob.click("#auth-submit")
    expect(bob.locator("#app")).to_be_visible()
    expect(bob.locator("#title")).to_have_text("New conversation")
    assert bob.locator(".msg").count() == 0
    assert bob.evaluate("window.mongars.conversationId()") is None
    bob.click("#menu")
    expect(bob.locator("#conversations li")).to_have_count(0)
    bob.screenshot(path=str(ARTIFACTS / "chat-phone-menu.png"))
    bob.click("#new-chat")
    bob.fill("#input", "Hello!")
    bob.keyboard.press("Enter")
    expect(bob.locator("#send")).to_be_visible(timeout=60_000)
    expect(bob.locator(".msg.assistant .body").last).not_to_be_empty()
    bob.screenshot(path=str(ARTIFACTS / "chat-phone.png"))
    page.screenshot(path=str(ARTIFACTS / "chat-desktop-markdown.png"))
    (ARTIFACTS / "page-weight.txt").write_text(f"first load: {first_load} bytes\n")
    phone.close()
    desktop.close()
