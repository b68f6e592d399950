"""The web chat page driven in a real browser: Debian's Chromium through Playwright.

The browser is ``/usr/bin/chromium`` (``LIMAMONO_CHROMIUM`` overrides it), which
``make setup`` installs where it can install system packages; Playwright only drives it
(no browser is downloaded, ever). Without either, every test here is skipped with the
reason, which ``pytest -ra`` (the project's default) prints in its summary.

Most tests run on a paced scripted engine (replies word by word, a few ms apart), so they
are fast and every reply is known; one drives the embedded model (marked slow).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from limamono.cards import new_card, write_card
from limamono.cli import app as cli_app
from limamono.cli import chat_cmd
from limamono.engine.protocol import Completion, TextChunk
from limamono.server import ServerConfig, WebChatConfig, create_app
from limamono.store import ChatStore
from test_chat import ScriptedEngine
from test_server_fakes import RuntimeAdapters, live_server

CHROMIUM = Path(os.environ.get("LIMAMONO_CHROMIUM", "/usr/bin/chromium"))
#: Chromium switches: headless, no sandbox (CI runs as root), nothing fetched from the
#: network behind the test's back.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[1]
#: Where ``LIMAMONO_SCREENSHOTS=1`` writes the documentation's screenshots.
SHOTS = REPO / "docs" / "images"
TIMEOUT_MS = 15_000

GREETING = ('Mira looked up from the lamp as the door banged open. "You made it up the '
            'stairs, then." _Another one caught by the storm._ *The shutters rattle.*')
ALTERNATE = "The lamp turned above them, slow and patient. \"Sit. The kettle's on.\""


class PacedEngine:
    """Scripted replies, streamed a word at a time with a pause (so a stream can be
    stopped), honouring the cancel event like the real engines."""

    model_name = "scripted"

    def __init__(self, replies: Sequence[str], pace: float = 0.01,
                 context_length: int = 4096) -> None:
        self.replies = list(replies)
        self.pace = pace
        self.context_length = context_length
        self.prompts: list[str] = []

    def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join("x" * i for i in ids)

    def stream_text(self, prompt: str, settings: Any, max_new_tokens: int,
                    stop: Sequence[str] = (), cancel: threading.Event | None = None,
                    truncation: str = "left") -> Iterator[TextChunk]:
        self.prompts.append(prompt)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        count = 0
        for count, piece in enumerate(re.findall(r"\s*\S+", reply)[:max_new_tokens], 1):
            if cancel is not None and cancel.wait(self.pace):
                yield TextChunk("", "cancelled", len(prompt.split()), count - 1)
                return
            yield TextChunk(piece, None, len(prompt.split()), count)
        yield TextChunk("", "stop", len(prompt.split()), count)

    def generate(self, prompt: str, settings: Any, max_new_tokens: int,
                 stop: Sequence[str] = (), cancel: threading.Event | None = None,
                 truncation: str = "left") -> Completion:
        chunks = list(self.stream_text(prompt, settings, max_new_tokens, stop, cancel))
        return Completion("".join(c.text for c in chunks), chunks[-1].finish_reason or "stop",
                          0, len(chunks) - 1)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, with a fresh profile folder."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: Playwright for Python is not installed "
                    "(pip install -e '.[dev]', as make setup does)")
    if not CHROMIUM.is_file():
        pytest.skip(f"BROWSER TESTS SKIPPED: no Chromium at {CHROMIUM} (apt-get install "
                    "chromium, which make setup does when it runs as root; or set "
                    "LIMAMONO_CHROMIUM)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 860}, accept_downloads=False)
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A new tab; fails the test on any script error or CSP violation the page reports."""
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error"
           and "Content Security Policy" in m.text else None)
    tab.errors = errors
    yield tab
    tab.close()
    assert errors == []


def mira_card(folder: Path, **fields: Any) -> Path:
    card = new_card("Mira Holt", description="Mira keeps the lamp at Gull Point.",
                    scenario="A storm traps a visitor at the lighthouse.",
                    first_mes=GREETING, alternate_greetings=[ALTERNATE], **fields)
    path = folder / "mira-holt.png"
    write_card(card, path)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, PacedEngine, Path]]:
    engine = PacedEngine(["She nodded slowly."])
    db = tmp_path / "chats.db"
    app = create_app(engine, ServerConfig(), WebChatConfig(db, REPO / "examples" / "characters"))
    with live_server(app) as url:
        yield url, engine, db


def import_by_chooser(page: Any, card: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click("label.link")
    chooser.value.set_files(str(card))


def last_text(page: Any) -> str:
    return page.locator("#messages .message .text").last.inner_text()


def wait_idle(page: Any) -> None:
    page.wait_for_selector("#send:not([hidden])")
    page.wait_for_function("() => !document.querySelector('.message.streaming')")


#: Records every text the streaming message shows (a MutationObserver, installed by the
#: test through the DevTools protocol, which the page's CSP does not govern).
WATCH_STREAM = """() => {
    window.__seen = [];
    new MutationObserver(() => {
        const text = document.querySelector(".message.streaming .text");
        const now = text ? text.textContent : "";
        if (now && window.__seen[window.__seen.length - 1] !== now) window.__seen.push(now);
    }).observe(document.querySelector("#messages"),
               {childList: true, subtree: true, characterData: true});
}"""


def send(page: Any, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


# --------------------------------------------------------------------------- tests

def test_import_chat_stop_swipe_edit_reload_and_the_terminal(site, page, tmp_path,
                                                             monkeypatch) -> None:
    url, engine, db = site
    page.goto(url)
    page.fill("#user-name", "Tom")
    import_by_chooser(page, mira_card(tmp_path))
    page.wait_for_selector("article.message.char")
    assert page.inner_text("#chat-title") == "Mira Holt & Tom"
    assert last_text(page) == GREETING
    # the house style, as the terminal shows it: one span per kind, text only
    kinds = page.eval_on_selector_all("article.message .text span",
                                      "spans => spans.map(s => [s.className, s.textContent])")
    assert kinds == [["s-narration", "Mira looked up from the lamp as the door banged open. "],
                     ["s-dialogue", '"You made it up the stairs, then."'],
                     ["s-narration", " "], ["s-thought", "_Another one caught by the storm._"],
                     ["s-narration", " "], ["s-sound", "*The shutters rattle.*"]]
    assert page.eval_on_selector(".s-dialogue", "e => getComputedStyle(e).fontWeight") == "700"
    assert page.eval_on_selector(".s-thought", "e => getComputedStyle(e).fontStyle") == "italic"
    # the alternate greeting is a swipe of the first message
    page.click("article.message .swipe-right")
    page.wait_for_function("() => document.querySelector('.swipe-count').textContent === '2/2'")
    assert last_text(page) == ALTERNATE
    page.click("article.message .swipe-left")
    page.wait_for_function("() => document.querySelector('.swipe-count').textContent === '1/2'")

    # two streamed turns
    engine.replies = ['She nodded slowly. "Sit by the stove."', "The wind rose outside."]
    page.evaluate(WATCH_STREAM)
    engine.pace = 0.08  # words far enough apart to arrive in separate reads
    send(page, "Hello there.")
    wait_idle(page)
    assert last_text(page) == 'She nodded slowly. "Sit by the stove."'
    # it streamed: the reply grew in the page (pieces that arrive in one network read
    # are drawn together, so not every word is seen on its own)
    seen = page.evaluate("window.__seen")
    assert seen[-1] == 'She nodded slowly. "Sit by the stove."' and len(seen) >= 3, seen
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(seen)), seen
    engine.pace = 0.01
    assert re.fullmatch(r"7 tokens · [\d.]+ tok/s · context \d+/4096",
                        page.inner_text("#stats"))
    send(page, "Is it always this wet?")
    wait_idle(page)
    assert last_text(page) == "The wind rose outside."
    lengths = page.eval_on_selector_all("article.message .length", "e => e.map(x => x.textContent)")
    assert lengths == ["tiny", "micro", "micro", "micro", "micro"]

    # stop a stream: the partial reply is kept and saved
    engine.pace = 0.3
    engine.replies = ["one two three four five six seven eight nine ten eleven twelve"]
    send(page, "Tell me everything.")
    page.wait_for_selector("#stop:not([hidden])")
    page.wait_for_function("() => (document.querySelector('.message.streaming .text') || {})"
                           ".textContent?.startsWith('one')")
    page.click("#stop")
    wait_idle(page)
    stopped = last_text(page)
    assert stopped.startswith("one") and not stopped.endswith("twelve")
    assert "stopped" in page.locator("article.message").last.inner_text()
    saved = ChatStore(db).load_chat(1).messages[-1]
    assert (saved.text, saved.current.finish_reason) == (stopped, "cancelled")

    # swipe: a new one, back to the first, forward again
    engine.pace = 0.01
    engine.replies = ["A second answer."]
    page.click("article.message:last-of-type .swipe-right")
    wait_idle(page)
    assert last_text(page) == "A second answer."
    assert page.locator(".swipe-count").last.inner_text() == "2/2"
    page.click("article.message:last-of-type .swipe-left")
    page.wait_for_function("() => [...document.querySelectorAll('.swipe-count')].pop().textContent"
                           " === '1/2'")
    assert last_text(page) == stopped
    page.click("article.message:last-of-type .swipe-right")
    page.wait_for_function("() => [...document.querySelectorAll('.swipe-count')].pop().textContent"
                           " === '2/2'")
    assert last_text(page) == "A second answer."

    # edit
    page.locator("article.message").last.get_by_role("button", name="Edit").click()
    page.fill(".edit-box textarea", 'Edited. "Quite."')
    page.click(".save-edit")
    page.wait_for_selector("article.message:last-of-type .s-dialogue")
    assert last_text(page) == 'Edited. "Quite."'
    assert ChatStore(db).load_chat(1).messages[-1].text == 'Edited. "Quite."'

    # reload: the chat is in the list and opens again
    page.reload()
    page.wait_for_selector("#chat-list li[data-chat-id='1']")
    assert "Mira Holt" in page.inner_text("#chat-list")
    page.wait_for_selector("article.message")
    assert last_text(page) == 'Edited. "Quite."'

    # the terminal goes on with the same chat; the page shows its turn
    terminal = ScriptedEngine(["From the terminal, softly."])
    monkeypatch.setattr(chat_cmd, "make_engine", lambda *a, **k: terminal)
    result = CliRunner().invoke(cli_app, ["chat", "--chat", "1", "--db", str(db)],
                                input="Still there?\n")
    assert result.exit_code == 0, result.output
    page.wait_for_function("() => [...document.querySelectorAll('article.message .text')].pop()"
                           ".textContent === 'From the terminal, softly.'", timeout=10_000)
    # ... and the page goes on after it
    engine.replies = ["Back in the page."]
    send(page, "Yes.")
    wait_idle(page)
    assert last_text(page) == "Back in the page."
    assert [m.text for m in ChatStore(db).load_chat(1).messages][-4:] == [
        "Still there?", "From the terminal, softly.", "Yes.", "Back in the page."]


def test_a_bad_card_is_refused_inline(site, page, tmp_path) -> None:
    url, _, _ = site
    page.goto(url)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    import_by_chooser(page, bad)
    page.wait_for_selector("#import-error:not([hidden])")
    assert page.inner_text("#import-error").startswith("broken.png: ")
    assert page.locator("article.message").count() == 0


def test_a_card_dropped_on_the_page_starts_a_chat(site, page, tmp_path) -> None:
    url, _, _ = site
    page.goto(url)
    page.wait_for_selector("#chat-list")
    data = list(mira_card(tmp_path).read_bytes())
    # A drop as the browser delivers it: a DataTransfer holding the file, on the messages.
    page.evaluate("""bytes => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "mira-holt.png",
                                    {type: "image/png"}));
        const target = document.querySelector("#messages");
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                      dataTransfer: transfer}));
        }
    }""", data)
    page.wait_for_selector("article.message.char")
    assert last_text(page) == GREETING
    assert page.inner_text("#chat-title") == "Mira Holt & User"
    assert not page.evaluate("document.body.classList.contains('dragging')")


HOSTILE = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
           '<a href="javascript:window.__pwned=3">click</a><style>body{display:none}</style>'
           '<svg onload="window.__pwned=4"></svg>"><iframe src="javascript:1"></iframe>'
           '<b onmouseover="window.__pwned=5">x</b>')


def page_elements(page: Any) -> list[tuple[str, str]]:
    return page.eval_on_selector_all(
        "*", "all => all.map(e => [e.tagName.toLowerCase(), e.className && "
        "e.className.baseVal === undefined ? e.className : ''])")


def test_a_hostile_card_and_reply_stay_text(site, page, tmp_path) -> None:
    url, engine, _ = site
    card = new_card("<b>Evil</b>" + HOSTILE, description=HOSTILE, personality=HOSTILE,
                    scenario=HOSTILE, first_mes=HOSTILE, mes_example=HOSTILE,
                    alternate_greetings=[HOSTILE], creator_notes=HOSTILE,
                    system_prompt=HOSTILE, post_history_instructions=HOSTILE, tags=[HOSTILE],
                    creator=HOSTILE, character_version=HOSTILE)
    path = tmp_path / "hostile.json"
    write_card(card, path)
    engine.replies = [HOSTILE]
    page.goto(url)
    page.wait_for_selector("#chat-list")
    before = set(map(tuple, page_elements(page)))
    page.fill("#user-name", '<img src=x onerror="window.__pwned=9">')
    import_by_chooser(page, path)
    page.wait_for_selector("article.message.char")
    send(page, HOSTILE)
    wait_idle(page)
    page.click("article.message:last-of-type .swipe-right")  # a hostile swipe too
    wait_idle(page)
    page.reload()
    page.wait_for_selector("article.message.char")
    texts = page.eval_on_selector_all("article.message .text", "e => e.map(x => x.textContent)")
    assert texts == [HOSTILE] * 3
    assert page.evaluate("window.__pwned") is None
    # Every element is one the page makes: its own tags and classes, no card markup.
    made = {("article", "message char"), ("article", "message user"), ("div", "message-head"),
            ("div", "message-tools"), ("div", "text"), ("div", "message-foot"),
            ("div", "swipes"), ("span", "swipe-count"), ("span", "name"), ("span", "length"),
            ("span", "s-narration"), ("span", "s-dialogue"), ("span", "s-thought"),
            ("span", "s-sound"), ("span", "s-title"), ("span", ""), ("li", ""),
            ("li", "active"), ("button", "open"), ("span", "who"), ("span", "meta"),
            ("button", "remove"), ("button", ""), ("button", "swipe-left"),
            ("button", "swipe-right"), ("option", "")}
    after = set(map(tuple, page_elements(page)))
    assert after - before - made == set()
    assert page.locator("script").count() == 1
    assert page.locator("script").get_attribute("src") == "/webchat/app.js"
    for tag in ("img[src='x']", "a", "style", "iframe", "svg", "b"):
        assert page.locator(f"#app {tag}").count() == 0, tag
    handlers = page.evaluate("[...document.querySelectorAll('*')].flatMap(e => "
                             "[...e.attributes].map(a => a.name)).filter(n => n.startsWith('on'))")
    assert handlers == []
    assert page.evaluate("getComputedStyle(document.body).display") == "block"


def test_busy_server_and_a_restart_give_clear_messages(tmp_path, page) -> None:
    engine = PacedEngine(["Slow words keep coming " * 20], pace=0.05)
    db = tmp_path / "chats.db"
    web = WebChatConfig(db, REPO / "examples" / "characters")
    app = create_app(engine, ServerConfig(queue=0), web)
    with live_server(app) as url:
        page.goto(url)
        page.select_option("#character-select", "orrin")
        page.click("#start-chat")
        page.wait_for_selector("article.message.char")
        # another client's reply holds the only slot: the page says the server is busy
        other = httpx.post(f"{url}/webchat/api/chats", json={"character": "orrin"}).json()
        with httpx.stream("POST", f"{url}/webchat/api/chats/{other['id']}/generate",
                          json={"action": "regenerate"}, timeout=30) as held:
            lines = held.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)
            deadline = time.monotonic() + 10
            while not httpx.get(f"{url}/health").json()["busy"]:
                assert time.monotonic() < deadline, "the other reply never started"
                time.sleep(0.02)
            send(page, "Hello?")
            page.wait_for_selector("#notice:not([hidden])")
            assert page.inner_text("#notice") == ("The server is busy with other requests; "
                                                  "try again in a moment.")
            httpx.post(f"{url}/webchat/api/chats/{other['id']}/stop")
        # the message is kept; the reply comes with Regenerate once the server is free
        assert last_text(page) == "Hello?"
        page.click("#regenerate")
        wait_idle(page)
        assert last_text(page).startswith("Slow words keep coming")
    # the server is gone: the page says so, and comes back when it is up again
    page.wait_for_function("() => document.querySelector('#notice').textContent.startsWith("
                           "'Cannot reach the server')", timeout=10_000)
    with live_server(create_app(engine, ServerConfig(), web)) as url2:
        page.goto(url2 + "/#chat=1")
        page.wait_for_selector("article.message.char")
        assert page.locator("#notice").is_hidden()


class AdapterPacedEngine(RuntimeAdapters, PacedEngine):
    """The paced engine with run-time adapters ``calm`` and ``terse``."""

    ADAPTERS = (("calm", 1.0), ("terse", 0.5))


def test_the_adapter_select_chooses_the_replys_adapters(tmp_path, page) -> None:
    """The page's Adapter control sends llama.cpp's ``lora`` field (shown only when the
    engine loads adapters at run time); an adapter loaded later appears on focus."""
    engine = AdapterPacedEngine(["She nodded slowly."])
    web = WebChatConfig(tmp_path / "chats.db", REPO / "examples" / "characters")
    with live_server(create_app(engine, ServerConfig(), web)) as url:
        page.goto(url)
        page.wait_for_function(CHARACTERS_LISTED)
        assert page.locator("#adapter-label").is_visible()
        assert page.locator("#adapter-select option").all_inner_texts() == [
            "all loaded (default)", "none (base model)", "calm × 1", "terse × 0.5"]
        page.select_option("#character-select", "orrin")
        page.click("#start-chat")
        page.wait_for_selector("article.message.char")
        page.select_option("#adapter-select", "1")
        send(page, "Hello?")
        wait_idle(page)
        page.select_option("#adapter-select", "base")
        page.click("#regenerate")
        wait_idle(page)
        page.select_option("#adapter-select", "")
        page.click("#regenerate")
        wait_idle(page)
        assert engine.choices == [{"calm": 0.0, "terse": 0.5}, {"calm": 0.0, "terse": 0.0},
                                  None]
        engine.loaded.append(SimpleNamespace(name="late", scale=2.0))
        page.evaluate("() => window.dispatchEvent(new Event('focus'))")
        page.wait_for_function("() => document.querySelector('#adapter-select')"
                               ".options.length === 5")
    plain = PacedEngine(["Fine."])
    with live_server(create_app(plain, ServerConfig(), web)) as url:
        page.goto(url)
        page.wait_for_function(CHARACTERS_LISTED)
        assert page.locator("#adapter-label").is_hidden()


CHARACTERS_LISTED = "() => document.querySelector('#character-select').options.length > 1"


def test_api_key_is_asked_once_and_kept_for_the_tab(tmp_path, page) -> None:
    engine = PacedEngine(["Hi."])
    web = WebChatConfig(tmp_path / "chats.db", REPO / "examples" / "characters")
    with live_server(create_app(engine, ServerConfig(api_key="sesame"), web)) as url:
        page.goto(url)
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "sesame")
        page.press("#key-input", "Enter")
        page.wait_for_function(CHARACTERS_LISTED)
        assert page.evaluate("sessionStorage.getItem('limamono-api-key')") == "sesame"
        assert page.evaluate("localStorage.getItem('limamono-api-key')") is None
        page.reload()
        page.wait_for_function(CHARACTERS_LISTED)
        assert page.locator("#key-dialog[open]").count() == 0


SCREENSHOT_REPLY = ('Orrin set the kettle down and listened to the hull tick as it cooled. '
                    '"The night shift is the only honest one," he said. _She came up here '
                    'to ask about the logs, not the tea._ *clank* He slid a mug across the '
                    "bench and nodded at the porthole, where ''The Long Dark'' was stencilled "
                    "backwards on the glass.")


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_screenshots_at_desktop_and_phone_width(site, page, scheme, tmp_path) -> None:
    """The views the docs show; ``LIMAMONO_SCREENSHOTS=1`` writes them to docs/images/."""
    url, engine, _ = site
    folder = SHOTS if os.environ.get("LIMAMONO_SCREENSHOTS") == "1" else tmp_path
    engine.replies = [SCREENSHOT_REPLY]
    page.emulate_media(color_scheme=scheme, reduced_motion="reduce")  # no drawer animation
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(url)
    page.fill("#user-name", "Wren")
    page.select_option("#character-select", "orrin")
    page.click("#start-chat")
    page.wait_for_selector("article.message.char")
    send(page, "I brought the logbook back. Do you have a minute?")
    wait_idle(page)
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(folder / f"webchat-desktop-{scheme}.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("document.querySelector('#messages').scrollTop = 1e6")
    assert page.locator("#sidebar").bounding_box()["x"] < -300  # the drawer is closed
    page.screenshot(path=str(folder / f"webchat-phone-{scheme}.png"))
    for name in (f"webchat-desktop-{scheme}.png", f"webchat-phone-{scheme}.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_two_streamed_turns_on_the_embedded_model(tmp_path, page) -> None:
    """The page on the real engine (llama.cpp or torch, as ``load_engine`` chooses), with a
    short card and short replies so that a busy machine finishes in minutes."""
    from limamono.engine import load_engine

    engine = load_engine(threads=1, context_length=1024)
    db = tmp_path / "chats.db"
    config = ServerConfig(default_max_tokens=16)
    with live_server(create_app(engine, config, WebChatConfig(db))) as url:
        page.goto(url)
        import_by_chooser(page, mira_card(tmp_path))
        page.wait_for_selector("article.message.char")
        for turn in ("Hello. Is the lamp lit?", "What do you keep up here?"):
            send(page, turn)
            page.wait_for_selector(".message.streaming", timeout=300_000)
            page.wait_for_function("() => !document.querySelector('.message.streaming')",
                                   timeout=300_000)
            assert page.locator("#notice").is_hidden(), page.inner_text("#notice")
            stats = page.inner_text("#stats")
            assert re.fullmatch(r"\d+ tokens · [\d.]+ tok/s · context \d+/1024", stats), stats
    saved = ChatStore(db).load_chat(1)
    assert [m.role for m in saved.messages] == ["char", "user", "char", "user", "char"]
    assert all(m.text.strip() for m in saved.messages)
    assert [m.current.finish_reason for m in saved.messages[2::2]] != [None, None]
