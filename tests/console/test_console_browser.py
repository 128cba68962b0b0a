"""The web console in a real headless Chromium, over a real brain process, hand process and scripted Messages API."""

from __future__ import annotations

import asyncio

import httpx2
import pytest

from brain.v1 import brain_pb2
from brainhands.console.clients import has_rpc
from brainhands.scripted_api import text_reply, tool_reply
from tests.console.conftest import fan_out, screenshot
from tests.procs import poll

pytestmark = pytest.mark.system

KEY = "tenant-a-key"
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def by_css(browser, css):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


async def sign_in(browser, console, key: str = KEY) -> None:
    def go():
        browser.get(console.url + "/login")
        [field] = by_css(browser, 'input[name="key"]')
        field.send_keys(key)
        by_css(browser, '#login button[type="submit"]')[0].click()

    await asyncio.to_thread(go)
    await poll(lambda: _true(browser.current_url.endswith("/sessions")), "the sessions page after signing in")


async def _true(value) -> bool:
    return bool(value)


async def open_page(browser, url: str) -> None:
    await asyncio.to_thread(browser.get, url)


def js(browser, script: str):
    return browser.execute_script(script)


async def test_a_request_without_a_key_sees_the_login_page(console, browser):
    await open_page(browser, console.url + "/sessions/some-session")
    assert browser.current_url.endswith("/login")
    assert by_css(browser, '#login input[name="key"]')
    assert not by_css(browser, "#sessions")
    screenshot(browser, "login")
    # The live stream and the forms refuse a request without a key too.
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(console.url + "/sessions/some-session/live")).status_code == 401


async def test_sessions_page_lists_a_finished_and_a_running_session(console, browser, scripts, runs):
    done = await runs.start(scripts.add("Answer at once.", text_reply("Here you are.")))
    running = await runs.start(scripts.add("Take your time.", tool_reply([("slow", {"seconds": 60})]), text_reply("late")))
    await poll(lambda: _status_is(runs, done, brain_pb2.SESSION_STATUS_FINISHED), "the first session to finish")
    await sign_in(browser, console)
    rows = {r.get_attribute("data-session"): r.get_attribute("data-status") for r in by_css(browser, "#sessions tbody tr")}
    assert rows == {done: "finished", running: "running"}
    order = [r.get_attribute("data-session") for r in by_css(browser, "#sessions tbody tr")]
    assert order == [running, done]  # sessions that may need a person come first
    assert "Answer at once." in browser.page_source and "Take your time." in browser.page_source
    screenshot(browser, "sessions")
    await open_page(browser, console.url + "/sessions?status=finished")
    assert [r.get_attribute("data-session") for r in by_css(browser, "#sessions tbody tr")] == [done]


async def _status_is(runs, session_id, status) -> bool:
    return await runs.status(session_id) == status


async def test_a_running_fan_out_updates_live_until_it_finishes(console, browser, scripts, runs):
    sid = await runs.start(scripts.add("Fan out to six slow workers.", *fan_out(1, 2, 3, 4, 5, 6, text="All six are back.")))
    await sign_in(browser, console)
    await open_page(browser, f"{console.url}/sessions/{sid}")
    js(browser, "window.sameDocument = 'yes';")  # gone if the page reloads
    seen = []

    async def finished() -> bool:
        # One script reads both, so a live redraw cannot come between them (or replace an element being read).
        ok, status = js(browser, "return [document.querySelectorAll('#timeline [data-kind=\"tool-call\"]"
                                 "[data-status=\"ok\"]').length, document.getElementById('status').dataset.status]")
        if not seen or seen[-1] != ok:
            seen.append(ok)
            if 0 < ok < 6 and not any(0 < n < 6 for n in seen[:-1]):
                screenshot(browser, "fan-out-live")
        return status == "finished"

    await poll(finished, "the page to show the session finished", timeout=60)
    assert js(browser, "return window.sameDocument") == "yes"
    assert seen[-1] == 6
    assert any(0 < n < 6 for n in seen), f"the page went from {seen[0]} to 6 finished calls without showing any between"
    assert "All six are back." in by_css(browser, "#result")[0].text
    assert len(by_css(browser, "#tree .call-item")) == 6
    screenshot(browser, "fan-out-finished")


async def test_a_script_in_a_hands_output_is_shown_as_text_and_never_runs(console, browser, scripts, runs):
    sid = await runs.start(scripts.add("Echo something nasty.", tool_reply([("echo", {"text": EVIL})]),
                                       text_reply("The hand said: " + EVIL)))
    await poll(lambda: _status_is(runs, sid, brain_pb2.SESSION_STATUS_FINISHED), "the session to finish")
    await sign_in(browser, console)
    await open_page(browser, f"{console.url}/sessions/{sid}")
    [output] = by_css(browser, "#tree pre.output")
    assert output.text == EVIL
    assert EVIL in by_css(browser, "#result")[0].text
    assert js(browser, "return window.pwned === undefined")
    assert js(browser, "return Array.from(document.scripts).map(s => s.getAttribute('src'))") == ["/static/console.js"]
    assert not by_css(browser, "#live img")
    screenshot(browser, "escaped-output")
    async with httpx2.AsyncClient(timeout=10) as http:
        policy = (await http.get(console.url + "/login")).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


async def test_the_cancel_button_stops_a_running_session(console, browser, scripts, runs):
    sid = await runs.start(scripts.add("Wait for a very long time.", tool_reply([("slow", {"seconds": 120})]), text_reply("never")))
    await sign_in(browser, console)
    await open_page(browser, f"{console.url}/sessions/{sid}")
    await poll(lambda: _true(by_css(browser, '#timeline [data-kind="tool-call"]')), "the slow call on the page")

    def cancel():
        [reason] = by_css(browser, '#actions input[name="reason"]')
        reason.send_keys("no need any more")
        by_css(browser, '#actions button[data-action="cancel"]')[0].click()

    await asyncio.to_thread(cancel)
    await poll(lambda: _true(js(browser, "return !!document.querySelector('#status[data-status=\"cancelled\"]')")),
               "the page to show the session cancelled")
    assert "no need any more" in by_css(browser, "#reason")[0].text
    assert await runs.status(sid) == brain_pb2.SESSION_STATUS_CANCELLED


async def test_a_form_without_the_csrf_token_changes_nothing(console, scripts, runs):
    sid = await runs.start(scripts.add("Keep going.", tool_reply([("slow", {"seconds": 120})]), text_reply("never")))
    async with httpx2.AsyncClient(timeout=10, cookies={"brainhands_key": KEY}) as http:
        forged = await http.post(f"{console.url}/sessions/{sid}/cancel", data={"reason": "forged"})
        wrong = await http.post(f"{console.url}/sessions/{sid}/cancel", data={"reason": "forged", "csrf": "0" * 64})
    assert forged.status_code == 403 and wrong.status_code == 403
    assert "did not come from the console" in forged.text
    assert await runs.status(sid) == brain_pb2.SESSION_STATUS_RUNNING


@pytest.mark.skipif(not has_rpc("Decide"), reason="this BrainService contract has no Decide yet")
async def test_the_approve_button_lets_a_waiting_session_go_on(console, browser, scripts, runs):
    sid = await runs.start(scripts.add("Ask before you echo.", tool_reply([("echo", {"text": "approved words"})]),
                                       text_reply("It went through.")), approve=["echo"])
    await sign_in(browser, console)
    rows = {r.get_attribute("data-session"): r.get_attribute("data-status") for r in by_css(browser, "#sessions tbody tr")}
    await open_page(browser, f"{console.url}/sessions/{sid}")
    await poll(lambda: _true(js(browser, "return !!document.querySelector('#approvals button[data-action=\"approve\"]')")),
               "the approve button", timeout=60)
    screenshot(browser, "waiting")
    await asyncio.to_thread(lambda: by_css(browser, '#approvals button[data-action="approve"]')[0].click())
    await poll(lambda: _true(js(browser, "return !!document.querySelector('#status[data-status=\"finished\"]')")),
               "the page to show the session finished after the approval", timeout=60)
    assert "It went through." in by_css(browser, "#result")[0].text
    assert by_css(browser, '#tree .call-item[data-outcome="ok"]')
    assert rows.get(sid) in ("waiting", "running")


async def test_the_fleet_page_shows_the_gateways_backends_and_the_tenants_quotas(processes, hands, brain, browser, tmp_path):
    import yaml

    from gateway.tenants import hash_key

    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0", "metrics": None,
        "routes": [{"hands": ["*"], "backends": [hands.address]}],
        "tenants": [{"name": "team-a", "api_keys": [hash_key(KEY)], "allow": ["*"],
                     "quotas": [{"hands": "slow", "calls": "100/h"}]}],
    }))
    gateway = processes(["serve", "gateway", "--config", str(config)], ready_event="gateway serving")
    console = processes(["console", "--listen", "127.0.0.1:0", "--brain", brain.address, "--gateway", gateway.address],
                        ready_event="serving console")
    console.url = f"http://{console.address}"
    await sign_in(browser, console)
    await open_page(browser, console.url + "/fleet")
    screenshot(browser, "fleet")
    [row] = by_css(browser, "#backends tbody tr")
    assert row.get_attribute("data-address") == hands.address
    assert row.get_attribute("data-state") == "serving"
    assert "slow" in row.text and "echo" in row.text
    [quota] = by_css(browser, "#usage tbody tr")
    assert "slow" in quota.text and "100" in quota.text
    assert "team-a" in by_css(browser, "h1.second")[0].text
