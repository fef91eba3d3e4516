"""The page against a server that needs an API key and is easily busy (a tiny reasoning model)."""

from __future__ import annotations

import threading
import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.web.conftest import API_KEY, Page
from tests.web.test_page import FUEL_MARCH, answers, ask, set_max_tokens, text_of, wait_answered

pytestmark = pytest.mark.timeout(300)


def give_key(page: Page, key: str) -> None:
    dialog = page.wait(lambda d: d.find_element(By.ID, "key-dialog").is_displayed() and d.find_element(By.ID, "key-dialog"))
    field = dialog.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    dialog.find_element(By.CSS_SELECTOR, "button[value=ok]").click()


def test_the_page_asks_for_the_key_once_and_says_when_it_is_wrong(keyed_page: Page) -> None:
    keyed_page.expected_statuses = {401}
    keyed_page.driver.set_window_size(1280, 900)
    keyed_page.driver.get(keyed_page.url + "/")
    give_key(keyed_page, "sk-wrong")
    error = keyed_page.wait(lambda d: d.find_element(By.ID, "key-error").text)
    assert "not accepted" in error
    give_key(keyed_page, API_KEY)
    keyed_page.wait(lambda d: not d.find_element(By.ID, "key-dialog").is_displayed()
                    and d.find_element(By.ID, "model").get_attribute("value"))
    ask(keyed_page, FUEL_MARCH)
    assert "$285.80" in text_of(wait_answered(keyed_page), ".content")
    keyed_page.driver.refresh()  # kept for the session: no second prompt
    keyed_page.wait(lambda d: d.find_element(By.ID, "model").get_attribute("value"))
    assert not keyed_page.driver.find_element(By.ID, "key-dialog").is_displayed()


def test_a_reasoning_models_thinking_is_shown_folded(keyed_page: Page) -> None:
    keyed_page.driver.execute_script(f"sessionStorage.setItem('labs.apiKey', '{API_KEY}')")  # given earlier
    keyed_page.open()
    Select(keyed_page.driver.find_element(By.ID, "model")).select_by_value("thinker")
    set_max_tokens(keyed_page, 24)
    ask(keyed_page, "Think about a number.")
    answer = wait_answered(keyed_page)
    thinking = answer.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None  # folded
    assert thinking.find_element(By.TAG_NAME, "summary").text == "Thinking"
    thinking.find_element(By.TAG_NAME, "summary").click()
    assert thinking.find_element(By.CSS_SELECTOR, ".thinking-text").text.strip()


def test_a_busy_server_is_reported_with_when_to_try_again(keyed_page: Page) -> None:
    keyed_page.expected_statuses = {503}
    keyed_page.driver.execute_script(f"sessionStorage.setItem('labs.apiKey', '{API_KEY}')")  # given earlier
    keyed_page.open()
    body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 2000, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    release = threading.Event()

    def occupy() -> None:  # one running, one queued: the page's request is the one too many
        with httpx.Client(base_url=keyed_page.url, timeout=120, headers=headers) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                for _ in response.iter_lines():
                    if release.is_set():
                        break  # closing the connection stops the request on the server

    engine = keyed_page.server.engine()
    threads = [threading.Thread(target=occupy, daemon=True) for _ in range(2)]
    # One after the other: two sent together can both count as waiting before the engine takes the first,
    # and the second is then refused as one too many.
    threads[0].start()
    keyed_page.wait(lambda d: engine.stats().running == 1)
    threads[1].start()
    keyed_page.wait(lambda d: engine.stats().waiting == 1)
    ask(keyed_page, "Hello")
    answer = wait_answered(keyed_page)
    error = text_of(answer, ".error-box")
    assert "busy" in error and "Try again in" in error, error
    release.set()
    for thread in threads:
        thread.join(timeout=120)
    keyed_page.server.wait_idle()
    answer.find_element(By.XPATH, ".//button[text()='Try again']").click()  # and now it answers
    answer = wait_answered(keyed_page)
    assert not answer.find_elements(By.CSS_SELECTOR, ".error-box")
    assert len(answers(keyed_page)) == 1
