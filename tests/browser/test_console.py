"""The console in a real browser: Debian's Chromium, headless, driven by Selenium through the
system chromedriver (no browser download). Each page is screenshotted into a temporary folder;
with ``PNS_SCREENSHOTS=DIR`` the overview and the bindings search are also copied there (that is
how ``docs/img/`` is made).

Without Chromium the tests are skipped on a developer's machine and fail in CI (``CI=true``):
``scripts/system-deps`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pns.model import Role

from ..conftest import Server, Tenant, cli_json, create_tenant, unique_hk
from ..test_callrecords import Receiver

CHROMIUM = os.environ.get("PNS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PNS_CHROMEDRIVER", "/usr/bin/chromedriver")


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: run scripts/system-deps"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Scene:
    """A server with two customers, a switch, bindings, a delivered call record, and an admin
    and a viewer operator."""

    def __init__(self, server: Server, receiver: Receiver):
        self.server = server
        self.receiver = receiver
        url = server.store_url
        self.admin_token = str(cli_json("operator", "create", "--name", "alice",
                                        "--store", url)["token"])
        self.viewer_token = str(cli_json("operator", "create", "--name", "victor", "--role",
                                         "viewer", "--store", url)["token"])
        self.rides = self.customer("acme-rides", 5, callback_url=receiver.url)
        self.shop = self.customer("shopfast", 3)
        self.switch = create_tenant(url, Role.SWITCH)
        rides = server.client(self.rides)
        self.driver_a = unique_hk("1")
        self.riders = [unique_hk("2") for _ in range(4)]
        self.bindings = [rides.bind_axb(self.driver_a, rider, expire_second=3600,
                                        customerBindId=f"trip-{i}")["data"]
                         for i, rider in enumerate(self.riders)]
        shop = server.client(self.shop)
        for _ in range(2):
            assert shop.bind_axb(unique_hk("1"), unique_hk("2"))["code"] == 0
        assert shop.bind_axb("", "")["code"] != 0  # an error, for the chart
        first = self.bindings[0]
        switch = server.client(self.switch)
        self.call_id = switch.query(self.riders[0], first["did"])["data"]["callId"]
        now = int(time.time())
        assert switch.report_call(self.call_id, startAt=now - 95, ringAt=now - 93,
                                  answerAt=now - 88, hangupAt=now - 20,
                                  hangupCause="NORMAL_CLEARING")["code"] == 0
        receiver.wait_for(1)

    def customer(self, name: str, numbers: int, callback_url: str = "") -> Tenant:
        """An account made as an operator would: through the admin API."""
        api = httpx.Client(base_url=self.server.url + "/admin/api/",
                           headers={"Authorization": f"Bearer {self.admin_token}"})
        made = api.post("accounts", json={"name": name}).json()
        xs = [unique_hk("3") for _ in range(numbers)]
        assert api.post("numbers", json={"account": made["accessKey"], "numbers": xs}
                        ).json()["added"] == numbers
        if callback_url:
            assert api.patch(f"accounts/{made['accessKey']}", json={
                "callbackUrl": callback_url}).status_code == 200
        return Tenant(made["accessKey"], made["accessSecret"], made["id"], xs)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    _require_browser()
    receiver = Receiver()
    server = Server(f"sqlite:///{tmp_path_factory.mktemp('console')}/pns.db")
    try:
        yield Scene(server, receiver)
    finally:
        server.stop()
        receiver.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(scene: Scene) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1440,1000", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(3)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: Any, shots: Path, name: str, keep: bool = False) -> Path:
    """Screenshot the whole page: the viewport is made as tall as the page first."""
    height = driver.execute_script(
        "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1440, "height": max(360, min(int(height) + 16, 3000)), "deviceScaleFactor": 1,
        "mobile": False})
    path = shots / f"{name}.png"
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert path.stat().st_size > 4000
    target = os.environ.get("PNS_SCREENSHOTS")
    if keep and target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / f"console-{name}.png")
    return path


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def log_in(driver: Any, scene: Scene, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(scene.server.url + "/console/login")
    css(driver, "#token")[0].send_keys(token)
    submit(driver, css(driver, "#login")[0])
    assert css(driver, "#operator") or css(driver, "#login-error")


def submit(driver: Any, button: Any, confirm: bool = False) -> None:
    """Click a button that loads a new page, and wait until the new page has loaded (else a
    lookup may still find the old page's elements).

    The old page is marked with a window property, which no new page has. Selenium's
    ``staleness_of`` is not used: while Chromium swaps the documents, a look at the old element
    may fail with "Node with given id does not belong to the document" (a WebDriverException,
    not a StaleElementReferenceException), which failed a CI run."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.__pnsOldPage = true")
    button.click()
    if confirm:
        accept_confirm(driver)

    def new_page_loaded(d: Any) -> bool:
        try:
            return bool(d.execute_script(
                "return !window.__pnsOldPage && document.readyState === 'complete'"))
        except WebDriverException:  # the documents are being swapped: look again
            return False

    WebDriverWait(driver, 10).until(new_page_loaded)


def accept_confirm(driver: Any) -> None:
    """console.js asks before destructive actions: proof that it loaded under the CSP."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 5).until(expected_conditions.alert_is_present())
    driver.switch_to.alert.accept()


def test_a_wrong_token_is_refused(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, "pnsop_not-a-real-token")
    assert browser.current_url.endswith("/console/login")
    assert "not valid" in css(browser, "#login-error")[0].text
    assert not css(browser, "#operator")
    assert browser.get_cookie("pns_session") is None
    shoot(browser, shots, "login-refused")


def test_log_in_and_the_overview_shows_the_pools(browser: Any, scene: Scene,
                                                 shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    assert browser.current_url.endswith("/console/")
    assert "alice" in css(browser, "#operator")[0].text
    cookie = browser.get_cookie("pns_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    rows = css(browser, "#pools tr.pool")
    text = " ".join(row.text for row in rows)
    assert "acme-rides" in text and "shopfast" in text
    rides = next(row for row in rows if "acme-rides" in row.text)
    assert "4/5" in rides.text  # four numbers in use out of five
    assert len(css(browser, "#pools svg.bar")) == 2 * len(rows)
    # The rates chart fills in as the background sampler sees the requests.
    deadline = time.monotonic() + 15
    while int(css(browser, "#requests-hour")[0].text) == 0:
        assert time.monotonic() < deadline, "the rate chart never saw a request"
        time.sleep(1)
        browser.refresh()
    assert css(browser, "svg#rates rect[fill='#2e86de']")
    assert css(browser, "svg#rates rect[fill='#c0392b']")  # the refused bind
    shoot(browser, shots, "overview", keep=True)


def test_find_a_binding_and_unbind_it(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + "/console/bindings")
    css(browser, "#search-number")[0].send_keys(scene.driver_a)
    submit(browser, css(browser, "#search-button")[0])
    assert f"number={scene.driver_a}" in browser.current_url
    rows = css(browser, "#bindings tr.binding")
    assert len(rows) == 4
    # The number searched for is the operator's own input; the other parties stay masked.
    assert all(rider not in browser.page_source for rider in scene.riders)
    assert scene.driver_a[-4:] in rows[0].text
    shoot(browser, shots, "bindings", keep=True)

    target = scene.bindings[3]["bindId"]
    row = next(r for r in rows if r.get_attribute("data-bind-id") == target)
    submit(browser, row.find_element("css selector", "button.unbind"), confirm=True)
    assert "The binding was ended." in css(browser, "#notice")[0].text
    assert len(css(browser, "#bindings tr.binding")) == 3
    listed = scene.server.client(scene.rides).list_bindings()["data"]["bindList"]
    assert target not in {b["bindId"] for b in listed}

    # The console's own path to a number's bindings.
    browser.get(scene.server.url + f"/console/bindings?number={scene.bindings[0]['did']}")
    assert scene.bindings[0]["bindId"] in browser.page_source


def test_reveal_a_party_is_logged(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    first = scene.bindings[0]
    browser.get(scene.server.url + f"/console/bindings?bindId={first['bindId']}")
    submit(browser, css(browser, "#bindings button.reveal")[0])
    assert css(browser, "#revealed-a")[0].text == scene.driver_a
    assert css(browser, "#revealed-b")[0].text == scene.riders[0]
    browser.get(scene.server.url + "/console/audit")
    assert any("binding.reveal" in row.text and first["bindId"] in row.text
               for row in css(browser, "#audit tr"))
    shoot(browser, shots, "audit")


def test_redeliver_a_record(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + f"/console/records?account={scene.rides.access_key}")
    rows = css(browser, "#records tr.record")
    assert [r.get_attribute("data-call-id") for r in rows] == [scene.call_id]
    assert "delivered" in rows[0].find_element("css selector", "td.delivery").text
    assert scene.riders[0] not in browser.page_source  # the caller is masked
    shoot(browser, shots, "records")
    submit(browser, rows[0].find_element("css selector", "button.redeliver"))
    assert "queued" in css(browser, "#notice")[0].text
    scene.receiver.wait_for(2)
    assert [b["callId"] for b in scene.receiver.bodies()] == [scene.call_id] * 2


def test_reveal_a_record_is_logged(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + f"/console/records?account={scene.rides.access_key}")
    row = row_with(browser, "records", scene.call_id)
    submit(browser, row.find_element("css selector", "button.reveal"))
    revealed = css(browser, "#revealed")[0].text
    assert scene.riders[0] in revealed and scene.call_id in revealed
    browser.get(scene.server.url + "/console/audit")
    rows = [row.text for row in css(browser, "#audit tr")]
    assert any("record.reveal" in text and scene.call_id in text and "alice" in text
               for text in rows)
    assert not any(scene.riders[0] in text for text in rows)


def row_with(driver: Any, table: str, text: str) -> Any:
    rows = [row for row in css(driver, f"#{table} tbody tr") if text in row.text
            or text in row.get_attribute("innerHTML")]
    assert len(rows) == 1, f"{len(rows)} rows of #{table} hold {text!r}"
    return rows[0]


def test_accounts_create_settings_rotate_disable(browser: Any, scene: Scene,
                                                  shots: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + "/console/accounts")
    css(browser, "#new-account-name")[0].send_keys("console-made")
    submit(browser, css(browser, "#create-account")[0])
    key = css(browser, "#secret-key")[0].text
    secret = css(browser, "#secret-value")[0].text
    assert re.fullmatch(r"[a-z0-9]{16}", key) and secret
    made = Tenant(key, secret, 0, [])
    assert scene.server.client(made).list_bindings()["code"] == 0
    shoot(browser, shots, "accounts")

    row = row_with(browser, "accounts", key)
    row.find_element("css selector", "input[name='callbackUrl']").send_keys(
        "https://hooks.example/cdr")
    row.find_element("css selector", "input[name='audioWhenCallFail']").send_keys("sorry.wav")
    submit(browser, row.find_element("css selector", "form.settings button"))
    assert "updated" in css(browser, "#notice")[0].text
    row = row_with(browser, "accounts", key)
    assert row.find_element("css selector", "input[name='callbackUrl']").get_attribute(
        "value") == "https://hooks.example/cdr"
    cool_off = row.find_element("css selector", "input[name='coolOffSeconds']")
    assert cool_off.get_attribute("value") == "0"
    cool_off.clear()
    cool_off.send_keys("600")
    submit(browser, row.find_element("css selector", "form.settings button"))
    row = row_with(browser, "accounts", key)
    assert row.find_element("css selector", "input[name='coolOffSeconds']").get_attribute(
        "value") == "600"
    assert row.find_element("css selector", "input[name='callbackUrl']").get_attribute(
        "value") == "https://hooks.example/cdr"

    submit(browser, row.find_element("xpath", ".//button[text()='Rotate secret']"),
           confirm=True)
    rotated = css(browser, "#secret-value")[0].text
    assert rotated and rotated != secret
    # Accounts are cached for up to 1 s per process (README): the new secret works within it.
    rotated_client = scene.server.client(Tenant(key, rotated, 0, []))
    deadline = time.monotonic() + 3
    while rotated_client.list_bindings()["code"] != 0 and time.monotonic() < deadline:
        time.sleep(0.3)  # few tries: failed signatures count toward the 1007 limit (20 in 10 s)
    assert rotated_client.list_bindings()["code"] == 0

    submit(browser, row_with(browser, "accounts", key).find_element(
        "xpath", ".//button[text()='Disable']"), confirm=True)
    assert "disabled" in row_with(browser, "accounts", key).text
    deadline = time.monotonic() + 10
    while scene.server.client(Tenant(key, rotated, 0, [])).list_bindings()["code"] != 1005:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_numbers_import_disable_move_remove(browser: Any, scene: Scene, shots: Path,
                                            tmp_path: Path) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + f"/console/numbers?account={scene.shop.access_key}")
    x, y = unique_hk("5"), unique_hk("5")
    numbers_file = tmp_path / "numbers.txt"
    numbers_file.write_text(f"{x}\n{y}\n")
    css(browser, "#numbers-file")[0].send_keys(str(numbers_file))  # console.js reads it in
    deadline = time.monotonic() + 5
    while x not in css(browser, "#numbers-text")[0].get_attribute("value"):
        assert time.monotonic() < deadline, "the file was not read into the box"
        time.sleep(0.1)
    submit(browser, css(browser, "button[value='add']")[0])
    assert "added" in css(browser, "#notice")[0].text
    assert x in css(browser, "#numbers")[0].text and y in css(browser, "#numbers")[0].text
    shoot(browser, shots, "numbers")

    def act(op: str, number: str, confirm: bool = False) -> None:
        box = css(browser, "#numbers-text")[0]
        box.clear()
        box.send_keys(number)
        submit(browser, css(browser, f"button[value='{op}']")[0], confirm)

    act("disable", x)
    assert "disabled" in css(browser, "#notice")[0].text
    assert "disabled" in row_with(browser, "numbers", x).text
    act("enable", x)
    assert "enabled" in css(browser, "#notice")[0].text
    assert "disabled" not in row_with(browser, "numbers", x).text
    assert "disabled" not in row_with(browser, "numbers", x).get_attribute("class")
    from selenium.webdriver.support.ui import Select

    Select(css(browser, "#numbers-account")[0]).select_by_value(scene.rides.access_key)
    act("move", y)
    assert "moved" in css(browser, "#notice")[0].text
    browser.get(scene.server.url + f"/console/numbers?account={scene.rides.access_key}")
    assert y in css(browser, "#numbers")[0].text
    # The notice tells what the CLI tells: the owner of a number another account has, and
    # the numbers not found; a change that found none is refused.
    browser.get(scene.server.url + f"/console/numbers?account={scene.shop.access_key}")
    act("add", y)
    notice = css(browser, "#notice")[0].text
    assert "0 added" in notice and "owned by another account" in notice
    assert f"{y} (account {scene.rides.access_key})" in notice
    missing = unique_hk("5")
    act("remove", f"{x}\n{missing}", confirm=True)
    notice = css(browser, "#notice")[0].text
    assert "1 removed" in notice and f"Not found: {missing}" in notice
    assert x not in css(browser, "#numbers")[0].text
    act("disable", missing)
    assert f"nothing to disable: no such number(s): {missing}" in css(browser, "#error")[0].text
    browser.get(scene.server.url + f"/console/numbers?account={scene.shop.access_key}")
    act("remove", y, confirm=True)
    assert "removed" in css(browser, "#notice")[0].text
    browser.get(scene.server.url + "/console/numbers")
    assert x not in css(browser, "#numbers")[0].text


def test_find_by_customer_bind_id_and_filter_records(browser: Any, scene: Scene) -> None:
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + "/console/bindings?customerBindId=trip-1")
    rows = css(browser, "#bindings tr.binding")
    assert [r.get_attribute("data-bind-id") for r in rows] == [scene.bindings[1]["bindId"]]
    browser.get(scene.server.url + f"/console/records?account={scene.rides.access_key}"
                "&from=2099-01-01T00:00")
    assert not css(browser, "#records tr.record")
    assert "No records in this range" in css(browser, "#records")[0].text


def test_retry_a_failed_delivery(browser: Any, scene: Scene, shots: Path) -> None:
    import asyncio

    from pns.model import EventState, OutboxEvent
    from pns.store import open_store

    event_id = f"failed-{time.time_ns()}"

    async def fail_one() -> None:
        store = await open_store(scene.server.store_url)
        try:
            now = int(time.time())
            await store.enqueue_event(OutboxEvent(
                event_id=event_id, account_id=scene.rides.account_id, kind="callRecord",
                body=b'{"callId":"0"}', created_at=now - 90000, next_attempt_at=now,
                attempts=14, state=EventState.FAILED, last_error="HTTP 503", call_id="0"))
        finally:
            await store.close()

    asyncio.run(fail_one())
    before = len(scene.receiver.received)
    log_in(browser, scene, scene.admin_token)
    browser.get(scene.server.url + "/console/deliveries?state=failed")
    row = row_with(browser, "deliveries", event_id)
    assert "HTTP 503" in row.text
    shoot(browser, shots, "deliveries")
    submit(browser, row.find_element("css selector", "button.retry"))
    assert "delivered again" in css(browser, "#notice")[0].text
    scene.receiver.wait_for(before + 1)
    assert scene.receiver.received[-1][0]["X-PNS-Event-Id"] == event_id


def test_a_viewer_cannot_write(browser: Any, scene: Scene, shots: Path) -> None:
    log_in(browser, scene, scene.viewer_token)
    assert "victor" in css(browser, "#operator")[0].text
    first = scene.bindings[0]
    browser.get(scene.server.url + f"/console/bindings?number={scene.driver_a}")
    assert css(browser, "#bindings tr.binding")
    assert not css(browser, "button.unbind") and not css(browser, "button.reveal")
    browser.get(scene.server.url + "/console/accounts")
    assert not css(browser, "#create-account")
    shoot(browser, shots, "viewer-accounts")
    # Posting anyway, with the viewer's own session and CSRF token, is refused.
    csrf = css(browser, "form.who input[name='csrf']")[0].get_attribute("value")
    session = browser.get_cookie("pns_session")["value"]
    answer = httpx.post(scene.server.url + f"/console/bindings/{first['bindId']}/unbind",
                        data={"csrf": csrf}, cookies={"pns_session": session})
    assert answer.status_code == 403 and "viewer" in answer.text
    listed = scene.server.client(scene.rides).list_bindings()["data"]["bindList"]
    assert first["bindId"] in {b["bindId"] for b in listed}


def test_log_out_ends_the_session(browser: Any, scene: Scene) -> None:
    """Last: logging out ends every session of the operator, the kept cookie's too."""
    log_in(browser, scene, scene.admin_token)
    kept = browser.get_cookie("pns_session")["value"]
    submit(browser, css(browser, "form.who button")[0])
    assert browser.current_url.endswith("/console/login")
    assert browser.get_cookie("pns_session") is None
    answer = httpx.get(scene.server.url + "/console/", cookies={"pns_session": kept})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
