"""The page, driven in a real Chromium against a live labs-api (the embedded default model).

Each test also checks (in conftest) that the console stayed clean and no request left the origin.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.web.conftest import Page

pytestmark = pytest.mark.timeout(300)

FUEL_MARCH = "How much did I spend on fuel in March 2024?"


def ask(page: Page, text: str) -> None:
    box = page.driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def answers(page: Page) -> list[Any]:
    return page.driver.find_elements(By.CSS_SELECTOR, "article.message.assistant")


def wait_answered(page: Page, count: int = 1, timeout: float = 120.0) -> Any:
    """The count-th answer, once it has finished streaming."""
    page.wait(lambda d: len(answers(page)) >= count and not d.find_element(By.ID, "send").get_attribute("hidden"),
              timeout)
    page.wait(lambda d: d.find_element(By.ID, "stop").get_attribute("hidden") is not None, timeout)
    return answers(page)[count - 1]


def set_max_tokens(page: Page, count: int) -> None:
    page.driver.find_element(By.ID, "open-settings").click()
    field = page.driver.find_element(By.ID, "max-tokens")
    field.clear()
    field.send_keys(str(count))
    page.driver.find_element(By.CSS_SELECTOR, "#settings-form button[value=close]").click()


def streaming_text(page: Page) -> str:
    """The last answer's text, read in one go (while it streams its element is replaced often)."""
    return page.driver.execute_script(
        "const all = document.querySelectorAll('article.message.assistant .content');"
        "return all.length ? all[all.length - 1].innerText : '';")


def text_of(element: Any, selector: str) -> str:
    return element.find_element(By.CSS_SELECTOR, selector).text


# ------------------------------------------------------------------------------ the page and its assets


def test_page_and_every_asset_are_served_from_the_package(page_server: Any) -> None:
    with httpx.Client(base_url=page_server.url) as client:
        html = client.get("/")
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        policy = html.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
        manifest = json.loads(client.get("/ui/vendor/vendor.json").text)
        for package in manifest["packages"]:
            assert package["version"] and package["license"] and package["integrity"].startswith("sha512-")
            for target in package["files"].values():
                response = client.get(f"/ui/vendor/{target}")
                assert response.status_code == 200 and response.content, target
        for asset in ("/ui/app.css", "/ui/js/main.js", "/ui/js/api.js", "/ui/favicon.svg"):
            assert client.get(asset).status_code == 200, asset
        assert client.get("/ui/js/missing.js").status_code == 404
        assert client.get("/v1/models").status_code == 200  # the JSON API is where it was


# ------------------------------------------------------------------------------ chat


def test_a_transactions_question_shows_the_exact_figure_from_the_data(page: Page) -> None:
    page.open()
    ask(page, FUEL_MARCH)
    answer = wait_answered(page)
    assert "$285.80" in text_of(answer, ".content")
    assert text_of(answer, ".from-data .badge") == "From your data"
    rows = answer.find_elements(By.CSS_SELECTOR, ".from-data table tbody tr")
    assert len(rows) == 6 and "Fuel" in rows[0].text
    assert "285.80" in text_of(answer, ".figures")
    assert "answered from your data" in text_of(answer, ".stats")


def test_a_general_question_streams_and_stop_ends_it(page: Page) -> None:
    page.open()
    ask(page, "Write a long story about a dragon who learns to bake bread. Make it at least ten paragraphs.")
    lengths = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(set(lengths)) < 3:  # three different lengths: it grows
        content = streaming_text(page)
        if content and (not lengths or len(content) > lengths[-1]):
            lengths.append(len(content))
        time.sleep(0.1)
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths), lengths
    assert page.driver.find_element(By.ID, "stop").is_displayed()
    page.driver.find_element(By.ID, "prompt").send_keys(Keys.ESCAPE)  # Escape stops
    answer = wait_answered(page, timeout=10)
    stopped_text = text_of(answer, ".content")
    assert "stopped" in text_of(answer, ".stats") and stopped_text
    time.sleep(0.5)
    assert text_of(answers(page)[-1], ".content") == stopped_text  # nothing more arrives
    page.server.wait_idle()  # the server stopped generating too: the engine is empty


def test_stats_regenerate_and_edit(page: Page) -> None:
    page.open()
    set_max_tokens(page, 12)
    ask(page, "Name a color.")
    answer = wait_answered(page)
    stats = text_of(answer, ".stats")
    assert "tokens" in stats and "first token" in stats and "tok/s" in stats, stats
    answer.find_element(By.XPATH, ".//button[text()='Regenerate']").click()
    wait_answered(page)
    assert len(answers(page)) == 1  # replaced, not added
    user = page.driver.find_element(By.CSS_SELECTOR, "article.message.user")
    user.find_element(By.XPATH, ".//button[text()='Edit']").click()
    box = page.driver.find_element(By.CSS_SELECTOR, "textarea.edit-box")
    box.clear()
    box.send_keys(FUEL_MARCH, Keys.ENTER)
    answer = wait_answered(page)
    assert len(answers(page)) == 1 and "$285.80" in text_of(answer, ".content")
    assert page.driver.find_element(By.CSS_SELECTOR, "article.message.user .content").text == FUEL_MARCH


def test_shift_enter_makes_a_new_line_and_does_not_send(page: Page) -> None:
    page.open()
    box = page.driver.find_element(By.ID, "prompt")
    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "second line")
    assert box.get_attribute("value") == "first line\nsecond line"
    assert not answers(page)


def test_markdown_is_sanitized_and_code_is_highlighted(page: Page) -> None:
    page.open()
    result = page.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/ui/js/markdown.js').then((m) => {
          const box = document.createElement('div');
          document.body.append(box);
          m.renderMarkdown(box, '# Title\\n\\n<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">\\n\\n' +
            '![remote](http://198.51.100.7/tracker.png) [bad](javascript:window.pwned=3) [link](http://198.51.100.7/)\\n\\n' +
            '```python\\ndef f():\\n    return 1\\n```');
          const links = [...box.querySelectorAll('a')];
          done({html: box.innerHTML, text: box.innerText, pwned: window.pwned ?? null,
                scripts: box.querySelectorAll('script').length,
                handlers: box.querySelectorAll('[onerror]').length,
                images: [...box.querySelectorAll('img')].map((img) => img.getAttribute('src')),
                hrefs: links.map((a) => a.getAttribute('href')), rels: links.map((a) => a.rel),
                copy: box.querySelectorAll('pre button.copy').length,
                spans: box.querySelectorAll('pre code span').length});
        });""")
    assert result["pwned"] is None and result["scripts"] == 0 and result["handlers"] == 0
    assert "<script>window.pwned = 1</script>" in result["text"]  # raw HTML is shown as text, not run
    assert result["images"] == [None]  # a remote image loses its address: nothing is fetched
    assert result["hrefs"] == [None, "http://198.51.100.7/"]  # javascript: links are dropped
    assert all(rel == "noopener noreferrer" for rel in result["rels"]) and "<h1" in result["html"]
    assert result["copy"] == 1 and result["spans"] > 0  # highlighted, with a copy button


def test_a_bad_request_is_shown_with_what_to_do(page: Page) -> None:
    page.expected_statuses = {400}
    page.open()
    set_max_tokens(page, 100000)
    ask(page, "Hello there")
    answer = wait_answered(page)
    error = text_of(answer, ".error-box")
    assert "context" in error and "max_tokens" in error, error  # the server's own message: what to change
    assert answer.find_element(By.XPATH, ".//button[text()='Try again']").is_displayed()


# ------------------------------------------------------------------------------ conversations


def test_conversations_survive_a_reload_and_can_be_renamed_deleted_exported_and_imported(page: Page, tmp_path: Path) -> None:
    page.open()
    ask(page, FUEL_MARCH)
    wait_answered(page)
    page.driver.refresh()
    page.open()
    items = page.driver.find_elements(By.CSS_SELECTOR, "#conversations li")
    assert len(items) == 1 and FUEL_MARCH[:20] in items[0].text
    assert "$285.80" in text_of(answers(page)[0], ".content")  # the open chat is back, answer included
    # rename
    items[0].find_element(By.CSS_SELECTOR, "button[title=Rename]").click()
    field = page.driver.find_element(By.CSS_SELECTOR, "#conversations input.rename")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("Fuel questions", Keys.ENTER)
    assert page.driver.find_element(By.CSS_SELECTOR, "#conversations li").text.startswith("Fuel questions")
    assert page.driver.find_element(By.ID, "chat-title").text == "Fuel questions"
    # export is the stored JSON; import it back after deleting
    exported = page.driver.execute_script("return localStorage.getItem('labs.conversations')")
    (tmp_path / "chats.json").write_text(json.dumps({"labs_conversations": json.loads(exported)}))
    page.driver.find_element(By.CSS_SELECTOR, "#conversations li button[title=Delete]").click()
    page.driver.switch_to.alert.accept()
    assert not page.driver.find_elements(By.CSS_SELECTOR, "#conversations li")
    assert not answers(page)
    page.driver.find_element(By.ID, "import-chats").send_keys(str(tmp_path / "chats.json"))
    page.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversations li")) == 1)
    assert "Imported 1 conversation" in page.driver.find_element(By.ID, "notice").text
    # a new chat with the keyboard
    page.driver.find_element(By.CSS_SELECTOR, "#conversations li .open-chat").click()
    assert answers(page)
    page.driver.find_element(By.ID, "prompt").send_keys(Keys.CONTROL, Keys.SHIFT, "o")
    page.wait(lambda d: not answers(page))
    assert page.driver.find_element(By.ID, "chat-title").text == "New chat"


def test_a_bad_import_file_is_reported(page: Page, tmp_path: Path) -> None:
    page.open()
    (tmp_path / "other.json").write_text('{"something": "else"}')
    page.driver.find_element(By.ID, "import-chats").send_keys(str(tmp_path / "other.json"))
    page.wait(lambda d: "Could not import other.json" in d.find_element(By.ID, "notice").text)
    assert not page.driver.find_elements(By.CSS_SELECTOR, "#conversations li")


# ------------------------------------------------------------------------------ documents


def test_a_document_added_from_the_page_is_listed_and_answers_with_sources(page: Page, tmp_path: Path) -> None:
    handbook = tmp_path / "staff-handbook.md"
    handbook.write_text("# Staff handbook\n\n## Leave\n\nEvery employee gets 25 days of paid annual leave per year. "
                        "Unused leave can be carried over until the end of March.\n\n## Expenses\n\n"
                        "Travel expenses are reimbursed within 14 days when the receipt is attached.\n")
    page.open()
    page.driver.find_element(By.ID, "open-documents").click()
    page.driver.find_element(By.ID, "document-files").send_keys(str(handbook))
    row = page.wait(lambda d: d.find_elements(By.XPATH, "//tbody[@id='documents-list']/tr[td/span[text()='staff-handbook.md']]"),
                    timeout=180)[0]
    assert int(row.find_elements(By.TAG_NAME, "td")[1].text) >= 1
    assert "ingested" in page.driver.find_element(By.ID, "upload-status").text
    page.driver.find_element(By.CSS_SELECTOR, "#documents-dialog [data-close]").click()
    set_max_tokens(page, 40)  # the sources are the point here, not the 135M model's prose
    page.driver.find_element(By.ID, "use-docs").click()
    ask(page, "How many days of paid annual leave does an employee get?")
    answer = wait_answered(page, timeout=180)
    assert text_of(answer, ".sources .badge") == "From your documents"
    source = answer.find_element(By.CSS_SELECTOR, ".sources button.source")
    assert "Staff handbook" in source.text and "staff-handbook.md" in source.text and "score" in source.text and "25 days" in source.text
    source.click()
    passage = page.wait(lambda d: d.find_element(By.ID, "passage-dialog").is_displayed() and d.find_element(By.ID, "passage-text"))
    assert "25 days of paid annual leave" in passage.text
    page.driver.find_element(By.CSS_SELECTOR, "#passage-dialog [data-close]").click()
    # delete it from the page
    page.driver.find_element(By.ID, "open-documents").click()
    page.wait(lambda d: d.find_elements(By.XPATH, "//tbody[@id='documents-list']/tr[td/span[text()='staff-handbook.md']]"))
    page.driver.find_element(By.CSS_SELECTOR, "#documents-list button.danger").click()
    page.driver.switch_to.alert.accept()
    page.wait(lambda d: "No documents yet" in d.find_element(By.ID, "documents-list").text)


# ------------------------------------------------------------------------------ status, layout


def test_the_status_view_shows_the_loaded_model_and_its_numbers(page: Page) -> None:
    page.open()
    ask(page, FUEL_MARCH)
    wait_answered(page)
    page.driver.find_element(By.ID, "open-status").click()
    row = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#status-body tr[data-model]"))[0]
    assert "smollm2-135m-instruct (default)" in row.text
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "0" and cells[1] == "0"  # waiting, running
    assert "Embedding model" in page.driver.find_element(By.ID, "status-body").text


def test_phone_width_hides_the_list_behind_a_button(page: Page) -> None:
    page.open(width=390, height=844)
    sidebar = page.driver.find_element(By.ID, "sidebar")
    assert sidebar.rect["x"] + sidebar.rect["width"] <= 1  # off screen
    page.driver.find_element(By.ID, "open-sidebar").click()
    page.wait(lambda d: d.find_element(By.ID, "sidebar").rect["x"] >= 0)
    assert page.driver.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scroll
    page.driver.find_element(By.ID, "close-sidebar").click()
    ask(page, FUEL_MARCH)
    answer = wait_answered(page)
    assert "$285.80" in text_of(answer, ".content")


def test_controls_are_labelled_for_screen_readers(page: Page) -> None:
    page.open()
    unlabelled = page.driver.execute_script("""
        return [...document.querySelectorAll('button, input, select, textarea')].filter((el) => {
          if (el.type === 'file' || el.closest('dialog:not([open])')) return false;
          const label = el.getAttribute('aria-label') || el.labels?.[0]?.textContent || el.textContent || el.title;
          return !label || !label.trim();
        }).map((el) => el.outerHTML);""")
    assert not unlabelled
    assert page.driver.find_element(By.ID, "messages").get_attribute("role") == "log"


def test_light_and_dark_follow_the_system(page: Page) -> None:
    page.open()
    background = "return getComputedStyle(document.body).backgroundColor"
    try:
        page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
        light = page.driver.execute_script(background)
        page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        dark = page.driver.execute_script(background)
    finally:
        page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    brightness = [sum(int(part) for part in colour[colour.index("(") + 1:-1].split(",")[:3]) for colour in (light, dark)]
    assert brightness[0] > 600 and brightness[1] < 150, (light, dark)


def test_an_imported_conversation_shows_thinking_folded_and_tool_calls(page: Page, tmp_path: Path) -> None:
    conversation = {"id": "c-tools", "title": "Weather", "created": 1, "updated": 2, "messages": [
        {"role": "user", "content": "What is the weather in Lisbon?"},
        {"role": "assistant", "content": "", "reasoning": "The user wants the weather; call the tool.",
         "toolCalls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}]}]}
    (tmp_path / "tools.json").write_text(json.dumps({"labs_conversations": [conversation]}))
    page.open()
    page.driver.find_element(By.ID, "import-chats").send_keys(str(tmp_path / "tools.json"))
    page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#conversations li .open-chat"))[0].click()
    answer = answers(page)[0]
    thinking = answer.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None
    call = answer.find_element(By.CSS_SELECTOR, "details.tool-call")
    assert call.find_element(By.TAG_NAME, "summary").text == "Tool call: get_weather"
    call.find_element(By.TAG_NAME, "summary").click()
    assert '{"city": "Lisbon"}' in call.text
