"""The chat page in a real headless Chromium, against a real Serve app that wants a key.

Debian's ``chromium`` (installed by ``make install-test``) driven by Playwright; nothing
is downloaded. One Serve app for the module: ouro-tiny (small), API keys configured.
Screenshots go to the test's tmp dir and, when OURO_SCREENSHOT_DIR is set, are copied
there too (docs/chat-page.png, shown in docs/walkthrough.md, comes from that).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect, sync_playwright

from ouro.apikeys import hash_api_key
from ouro.ledger import LedgerReader
from tests.fixtures.serve import ServeStack

pytestmark = pytest.mark.integration

API_KEY = "sk-page-" + "c" * 24
STORED_KEY = "ouro.apiKey"  # the page's sessionStorage entry
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 120_000  # two shared cores: a reply may queue behind other test processes
SECOND_CORRECTION = "Yes, I <em>love</em> jazz & blues."
HTML_ANSWER = "<img src=x onerror=\"document.title='pwned'\">Hi <b>there</b>"

# Records how the last answer's text grew, one entry per DOM change, to see it stream.
WATCH_STREAMING = """() => {
  window.ouroTextLengths = [];
  const log = document.getElementById("conversation");
  new MutationObserver(() => {
    const answers = log.querySelectorAll(".message-assistant .message-text");
    const last = answers[answers.length - 1];
    if (last) window.ouroTextLengths.push(last.textContent.length);
  }).observe(log, { subtree: true, childList: true, characterData: true });
}"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (make install-test apt-installs it)")
    return path


@pytest.fixture(scope="module")
def stack(
    chromium: str, serve_stack_factory, mlflow_server: str, ouro_tiny_small_dir: Path
) -> ServeStack:
    return serve_stack_factory(
        {
            "base_model": str(ouro_tiny_small_dir),
            "mlflow_tracking_uri": mlflow_server,
            "registered_model_name": f"ouro-chat-page-{uuid.uuid4().hex[:8]}",
            "api_keys": [API_KEY],
            "default_max_tokens": 24,
            # Every step's text as it comes: the toy model answers faster than the default
            # 50 ms coalescing interval, and the page must be seen filling in.
            "stream_interval_s": 0,
        }
    )


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh Chromium profile per test (so no key is remembered between tests)."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 720},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def requested_urls(browser: BrowserContext) -> list[str]:
    urls: list[str] = []
    browser.on("request", lambda request: urls.append(request.url))
    return urls


def save_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    target_dir = os.environ.get("OURO_SCREENSHOT_DIR")
    if target_dir:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target_dir) / name)
    return path


def enter_key(page: Page, key: str) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use key").click()


def open_page_with_key(browser: BrowserContext, stack: ServeStack) -> Page:
    page = browser.new_page()
    page.goto(f"{stack.base_url}/")
    enter_key(page, API_KEY)
    expect(page.locator("#api-key-panel")).to_be_hidden()
    return page


def test_ask_see_the_streamed_answer_and_correct_it(
    stack: ServeStack, browser: BrowserContext, requested_urls: list[str], tmp_path: Path
) -> None:
    page = open_page_with_key(browser, stack)
    expect(page.locator("#model-select option[value='ouro-base']")).to_have_count(1)
    expect(page.get_by_label("Model")).to_have_value("ouro")
    page.evaluate(WATCH_STREAMING)

    def greedy(route: Route) -> None:
        # The page samples; a sampled answer can be one token, which cannot stream in
        # pieces. The greedy answer of the embedded toy model is long enough.
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "temperature": 0}))

    page.route("**/v1/chat/completions", greedy)

    question = "Hello! What is your name?"
    prompt = page.get_by_label("Your message")
    prompt.fill(question)
    with page.expect_response(f"{stack.base_url}/v1/chat/completions") as answered:
        prompt.press("Enter")  # keyboard submit
    version = answered.value.headers["x-ouro-model-version"]

    reply = page.locator(".message-assistant").last
    correct_button = reply.get_by_role("button", name="Spotted a mistake?")
    expect(correct_button).to_be_visible()  # shown once the stream is complete
    expect(reply).to_have_attribute("aria-busy", "false")
    answer = reply.locator(".message-text").text_content()
    assert answer
    expect(reply.locator(".message-version")).to_have_text(version)
    assert version == "ouro-base"  # asked for "ouro"; no production adapter registered yet

    lengths = [n for n in page.evaluate("window.ouroTextLengths") if n > 0]
    assert lengths[-1] == len(answer)
    assert len(set(lengths)) > 1, f"the answer appeared in one piece: {lengths}"

    expect(page.locator(".message-user .message-text")).to_have_text(question)

    correct_button.click()
    editor = reply.get_by_label("What should Ouro have said?")
    expect(editor).to_have_value(answer)  # prefilled with the answer
    correction = "My name is Ouro, and I learn from your corrections."
    editor.fill(correction)
    reply.get_by_label("Why? (optional)").fill("it did not say its name")
    save_screenshot(page, tmp_path, "chat-page.png")
    reply.get_by_role("button", name="Send correction").click()

    confirmation = reply.locator(".feedback-result")
    expect(confirmation).to_contain_text("Your correction was saved")
    record_id = re.search(r"id (fb-[0-9a-f]+)", confirmation.text_content()).group(1)
    save_screenshot(page, tmp_path, "chat-page-saved.png")

    records = {r.id: r for r in LedgerReader(stack.settings.ledger_dir).scan().records}
    record = records[record_id]
    assert record.message_dicts() == [{"role": "user", "content": question}]
    assert record.completion == answer
    assert record.correction == correction
    assert record.reason == "it did not say its name"
    assert record.model == version
    assert record.completion_id
    assert record.api_key_hash == hash_api_key(API_KEY)

    # Works with no internet: every request went to the app itself.
    assert requested_urls
    assert all(url.startswith(stack.base_url + "/") for url in requested_urls), requested_urls


def test_a_correction_cites_the_whole_conversation_up_to_that_answer(
    stack: ServeStack, browser: BrowserContext
) -> None:
    page = open_page_with_key(browser, stack)
    prompt = page.get_by_label("Your message")
    questions = ["Hi there", "Do you like <b>music</b>?"]
    for number, question in enumerate(questions, start=1):
        prompt.fill(question)
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.get_by_role("button", name="Spotted a mistake?")).to_have_count(number)

    first, second = page.locator(".message-assistant").all()
    first_answer = first.locator(".message-text").text_content()
    second_answer = second.locator(".message-text").text_content()
    first.get_by_role("button", name="Spotted a mistake?").click()
    first.get_by_label("What should Ouro have said?").fill("Hello! Nice to meet you.")
    first.get_by_label("What should Ouro have said?").press("Control+Enter")
    expect(first.locator(".feedback-result")).to_contain_text("saved")
    second.get_by_role("button", name="Spotted a mistake?").click()
    second.get_by_label("What should Ouro have said?").fill(SECOND_CORRECTION)
    second.get_by_role("button", name="Send correction").click()
    expect(second.locator(".feedback-result")).to_contain_text("saved")

    ids = [
        re.search(r"id (fb-[0-9a-f]+)", view.locator(".feedback-result").text_content()).group(1)
        for view in (first, second)
    ]
    records = {r.id: r for r in LedgerReader(stack.settings.ledger_dir).scan().records}
    assert records[ids[0]].message_dicts() == [{"role": "user", "content": questions[0]}]
    assert records[ids[0]].completion == first_answer
    assert records[ids[1]].message_dicts() == [
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": questions[1]},
    ]
    assert records[ids[1]].completion == second_answer
    assert records[ids[1]].correction == SECOND_CORRECTION  # stored as typed
    # Typed markup is shown as text, never turned into elements.
    expect(page.locator(".message-user .message-text").last).to_have_text(questions[1])
    expect(page.locator("#conversation b, #conversation em")).to_have_count(0)


def test_a_follow_up_turn_sends_back_the_conversations_assigned_completion_id(
    stack: ServeStack, browser: BrowserContext
) -> None:
    """The page echoes x-ouro-conversation, so a canary's share stepping up never moves
    its conversation to another version; a new chat starts without it."""
    page = open_page_with_key(browser, stack)
    sent: list[str | None] = []
    answered: list[str] = []

    def on_request(request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            sent.append(request.headers.get("x-ouro-conversation"))

    def on_response(response) -> None:
        if response.url.endswith("/v1/chat/completions"):
            chunks = [line for line in response.text().splitlines() if '"id"' in line]
            answered.append(json.loads(chunks[0].removeprefix("data: "))["id"])

    page.on("request", on_request)
    page.on("response", on_response)
    prompt = page.get_by_label("Your message")
    for number, question in enumerate(["Hi there", "And how are you?"], start=1):
        prompt.fill(question)
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.get_by_role("button", name="Spotted a mistake?")).to_have_count(number)
    page.get_by_role("button", name="New chat").click()
    prompt.fill("Hello again")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_role("button", name="Spotted a mistake?")).to_have_count(1)

    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}\.(v[0-9]+|base)", answered[0])
    assert sent == [None, answered[0], None]


def test_rate_an_answer_thumbs_down_then_change_it(
    stack: ServeStack, browser: BrowserContext, requested_urls: list[str], tmp_path: Path
) -> None:
    page = open_page_with_key(browser, stack)
    page.get_by_label("Your message").fill("Tell me a joke")
    with page.expect_response(f"{stack.base_url}/v1/chat/completions") as answered:
        page.get_by_label("Your message").press("Enter")
    version = answered.value.headers["x-ouro-model-version"]
    reply = page.locator(".message-assistant").last
    expect(reply.get_by_role("button", name="Spotted a mistake?")).to_be_visible()
    answer = reply.locator(".message-text").text_content()
    rating = reply.get_by_role("group", name="Rate this answer")
    good = rating.get_by_role("button", name="Good answer")
    bad = rating.get_by_role("button", name="Bad answer")
    expect(good).to_have_attribute("aria-pressed", "false")
    expect(bad).to_have_attribute("aria-pressed", "false")
    expect(page.locator(".message-user .rating-button")).to_have_count(0)  # answers only

    bad.click()
    confirmation = reply.locator(".rating-result")
    expect(confirmation).to_contain_text("Rated as a bad answer")
    expect(bad).to_have_attribute("aria-pressed", "true")
    expect(good).to_have_attribute("aria-pressed", "false")
    save_screenshot(page, tmp_path, "chat-page-rated.png")
    down_id = re.search(r"id (fb-[0-9a-f]+)", confirmation.text_content()).group(1)

    scan = LedgerReader(stack.settings.ledger_dir).scan()
    record = next(r for r in scan.records if r.id == down_id)
    assert (record.kind, record.rating, record.correction) == ("rating", "down", None)
    assert record.message_dicts() == [{"role": "user", "content": "Tell me a joke"}]
    assert record.completion == answer
    assert record.model == version
    assert record.completion_id and record.completion_id.startswith("chatcmpl-")
    assert record.api_key_hash == hash_api_key(API_KEY)
    assert down_id not in {r.id for r in scan.corrections}  # never a training row

    # A second click changes the rating: posted again, the buttons follow.
    good.click()
    expect(confirmation).to_contain_text("Rated as a good answer")
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(bad).to_have_attribute("aria-pressed", "false")
    up_id = re.search(r"id (fb-[0-9a-f]+)", confirmation.text_content()).group(1)
    records = {r.id: r for r in LedgerReader(stack.settings.ledger_dir).scan().records}
    assert records[up_id].rating == "up" and records[up_id].completion_id == record.completion_id
    posts = len([url for url in requested_urls if url.endswith("/v1/feedback")])
    good.click()  # the same verdict again: nothing new to save
    expect(confirmation).to_contain_text("Already rated as a good answer")
    assert len([url for url in requested_urls if url.endswith("/v1/feedback")]) == posts

    # A rating the server refuses (the tab's key no longer valid, no new one given) says so
    # and keeps the saved verdict.
    page.evaluate(f"sessionStorage.setItem({json.dumps(STORED_KEY)}, 'sk-revoked-key')")
    bad.click()
    expect(page.locator("#api-key-panel")).to_contain_text("refused the key")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(confirmation).to_contain_text("Could not save the rating")
    expect(confirmation).to_have_class(re.compile(r"\bfeedback-error\b"))
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(bad).to_have_attribute("aria-pressed", "false")
    assert len(LedgerReader(stack.settings.ledger_dir).scan().records) == len(records)


def test_an_unchanged_correction_is_refused_before_sending(
    stack: ServeStack, browser: BrowserContext, requested_urls: list[str]
) -> None:
    page = open_page_with_key(browser, stack)
    page.get_by_label("Your message").fill("Hello")
    page.get_by_role("button", name="Send", exact=True).click()
    reply = page.locator(".message-assistant").last
    reply.get_by_role("button", name="Spotted a mistake?").click()
    before = len(LedgerReader(stack.settings.ledger_dir).scan().records)
    reply.get_by_role("button", name="Send correction").click()  # still the prefilled answer
    expect(reply.locator(".feedback-result")).to_contain_text("same as the answer")
    assert not [url for url in requested_urls if url.endswith("/v1/feedback")]
    assert len(LedgerReader(stack.settings.ledger_dir).scan().records) == before


def test_asks_for_a_key_refuses_a_wrong_one_and_keeps_a_good_one_for_the_tab(
    stack: ServeStack, browser: BrowserContext
) -> None:
    page = browser.new_page()
    page.goto(f"{stack.base_url}/")
    panel = page.locator("#api-key-panel")
    expect(panel).to_be_visible()  # /v1/models answered 401
    expect(panel).to_contain_text("needs an API key")
    expect(page.get_by_label("API key", exact=True)).to_be_focused()

    enter_key(page, "sk-wrong-key")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("refused the key: invalid API key")

    enter_key(page, API_KEY)
    expect(panel).to_be_hidden()
    expect(page.locator("#model-select option[value='ouro-base']")).to_have_count(1)
    assert page.evaluate(f"sessionStorage.getItem({json.dumps(STORED_KEY)})") == API_KEY

    # Kept for the tab: a reload asks nothing and chats straight away.
    page.reload()
    page.get_by_label("Your message").fill("Hello")
    page.get_by_label("Your message").press("Enter")
    expect(page.get_by_role("button", name="Spotted a mistake?")).to_be_visible()
    expect(panel).to_be_hidden()


def test_a_model_answer_made_of_html_is_shown_as_text(
    stack: ServeStack, browser: BrowserContext
) -> None:
    """The real server's streamed answer, with its text replaced by HTML (the tiny model
    cannot be made to say it): the page must show the markup, not build elements."""

    def answer_with_html(route: Route) -> None:
        response = route.fetch()
        events, replaced = [], False
        for event in response.text().split("\n\n"):
            if event.startswith("data: {"):
                chunk = json.loads(event.removeprefix("data: "))
                for choice in chunk.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        choice["delta"]["content"] = "" if replaced else HTML_ANSWER
                        replaced = True
                event = "data: " + json.dumps(chunk)
            events.append(event)
        assert replaced, response.text()
        route.fulfill(response=response, body="\n\n".join(events))

    page = open_page_with_key(browser, stack)
    page.route("**/v1/chat/completions", answer_with_html)
    page.get_by_label("Your message").fill("Say something")
    page.get_by_label("Your message").press("Enter")
    reply = page.locator(".message-assistant").last
    expect(reply.get_by_role("button", name="Spotted a mistake?")).to_be_visible()
    expect(reply.locator(".message-text")).to_have_text(HTML_ANSWER)
    expect(page.locator("#conversation img")).to_have_count(0)
    expect(page.locator("#conversation b")).to_have_count(0)
    assert page.title() == "Ouro chat"


def test_a_badge_says_when_a_correction_answered(
    stack: ServeStack, browser: BrowserContext
) -> None:
    """The real server answers with the base model (no version is registered): 'base model'.
    Its headers are then rewritten to a routed answer (the toy model has no corrections):
    the badge names the version and the similarity."""
    page = open_page_with_key(browser, stack)
    page.get_by_label("Your message").fill("Hello")
    page.get_by_label("Your message").press("Enter")
    first = page.locator(".message-assistant").last
    expect(first.locator(".message-route")).to_have_text("base model")
    # The page ignores Enter while an answer streams: wait for this one to finish.
    expect(first.get_by_role("button", name="Spotted a mistake?")).to_be_visible()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_enabled()

    def routed(route: Route) -> None:
        response = route.fetch()
        headers = {
            **response.headers,
            "x-ouro-model-version": "ouro@v7",
            "x-ouro-route": "match",
            "x-ouro-route-similarity": "0.9312",
        }
        route.fulfill(response=response, headers=headers)

    page.route("**/v1/chat/completions", routed)
    page.get_by_label("Your message").fill("When does the library open?")
    page.get_by_label("Your message").press("Enter")
    badge = page.locator(".message-assistant").last.locator(".message-route")
    expect(badge).to_have_text("ouro@v7 · correction, similarity 0.93")
    expect(badge).to_have_class(re.compile(r"\broute-correction\b"))
