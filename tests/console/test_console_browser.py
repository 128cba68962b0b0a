"""The web console in a real headless Chromium, over a real brain process, hand process and scripted Messages API."""

from __future__ import annotations

import asyncio
import json

import httpx2
import pytest

from brain.v1 import brain_pb2
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


async def test_approve_and_deny_go_through_the_brain_and_the_page_follows_without_a_reload(console, browser, scripts, runs):
    results = []

    def last_turn(body):
        results.extend(b for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                       for b in m["content"] if b.get("type") == "tool_result")
        return text_reply("One went through, one did not.")

    sid = await runs.start(scripts.add("Ask before you echo twice.", tool_reply([("echo", {"text": "yes words"}),
                                                                                  ("echo", {"text": "no words"})]),
                                       last_turn), approve=["echo"])
    await sign_in(browser, console)
    await open_page(browser, f"{console.url}/sessions/{sid}")
    js(browser, "window.sameDocument = 'yes';")  # gone if the page reloads

    def waiting() -> dict[str, str]:
        """The approvals the page shows: the input asked -> the call id."""
        return js(browser, "return Object.fromEntries(Array.from(document.querySelectorAll('#approvals .approval'))"
                           ".map(a => [JSON.parse(a.querySelector('pre').textContent).text, a.dataset.callId]))")

    await poll(lambda: _true(len(waiting()) == 2), "two approve buttons", timeout=60)
    screenshot(browser, "waiting")
    assert [t.text for t in by_css(browser, "#tree .turn-item > b")] == ["Turn 1"]  # waiting: not an answer yet
    calls = waiting()
    await asyncio.to_thread(lambda: by_css(browser, f'.approval[data-call-id="{calls["yes words"]}"] '
                                                    'button[data-action="approve"]')[0].click())
    await poll(lambda: _true(list(waiting()) == ["no words"]), "the page to show the approval decided", timeout=30)

    def deny():
        [form] = by_css(browser, f'.approval[data-call-id="{calls["no words"]}"] form[action$="/deny"]')
        form.find_element("css selector", 'input[name="reason"]').send_keys("not these words")
        form.find_element("css selector", 'button[data-action="deny"]').click()

    await asyncio.to_thread(deny)
    await poll(lambda: _true(js(browser, "return !!document.querySelector('#status[data-status=\"finished\"]')")),
               "the page to show the session finished after the decisions", timeout=60)
    assert js(browser, "return window.sameDocument") == "yes"
    assert "One went through, one did not." in by_css(browser, "#result")[0].text
    outcomes = {c.get_attribute("data-call-id"): c.get_attribute("data-outcome") for c in by_css(browser, "#tree .call-item")}
    assert outcomes[calls["yes words"]] == "ok"
    bars = js(browser, "return Object.fromEntries(Array.from(document.querySelectorAll('#timeline .bar[data-kind=\"approval\"]'))"
                       ".map(b => [b.dataset.callId, [b.dataset.status, b.textContent]]))")
    assert bars[calls["yes words"]][0] == "approved"
    assert bars[calls["no words"]][0] == "denied" and "not these words" in bars[calls["no words"]][1]
    # The brain's Decide carried the reason to the model, as the denied call's result.
    by_id = {r["tool_use_id"]: json.dumps(r) for r in results}
    assert "yes words" in by_id[calls["yes words"]] and "not these words" in by_id[calls["no words"]]
    screenshot(browser, "decided")


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


A_KEY, B_KEY = "console-key-of-a-0000000000001", "console-key-of-b-0000000000002"


async def test_another_tenants_session_is_not_found_and_its_buttons_do_nothing(processes, hands, model_api, scripts,
                                                                               browser, tmp_path):
    import grpc
    import yaml

    from brain.v1 import brain_pb2_grpc
    from gateway.tenants import hash_key
    from tests.console.conftest import start_brain, start_console

    config = tmp_path / "brain.yaml"
    config.write_text(yaml.safe_dump({"tenants": [{"name": "a", "api_keys": [hash_key(A_KEY)]},
                                                  {"name": "b", "api_keys": [hash_key(B_KEY)]}]}))
    brain = start_brain(processes, hands, model_api, tmp_path, "--config", str(config))
    console = start_console(processes, brain)
    task = scripts.add("A's private plans for the merger.", tool_reply([("echo", {"text": "A's secret words"})]),
                       text_reply("never"))
    a = (("authorization", f"Bearer {A_KEY}"),)
    async with grpc.aio.insecure_channel(brain.address) as channel:
        stub = brain_pb2_grpc.BrainServiceStub(channel)
        run = stub.Run(brain_pb2.RunRequest(task=task, approve=["echo"]), metadata=a, timeout=60)
        events = [event async for event in run]  # to its end: the run stops at the approval, waiting
        sid = events[0].session_id
        [call_id] = [json.loads(e.data_json)["call_id"] for e in events if e.type == "approval_requested"]

        async def a_view():
            got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid), metadata=a, timeout=10)
            return got.session.status, got.session.last_seq

        before = await a_view()
        assert before[0] == brain_pb2.SESSION_STATUS_WAITING
        await sign_in(browser, console, B_KEY)
        assert sid not in browser.page_source  # B's sessions list has none of A's
        await open_page(browser, f"{console.url}/sessions/{sid}")
        assert "not found" in by_css(browser, "#error h1")[0].text
        assert "merger" not in browser.page_source and "secret" not in browser.page_source
        screenshot(browser, "other-tenant")
        cookies = {"brainhands_key": B_KEY}
        async with httpx2.AsyncClient(timeout=10, cookies=cookies) as http:
            page = (await http.get(console.url + "/sessions")).text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]  # B's own, valid token
            live = await http.get(f"{console.url}/sessions/{sid}/live")
            posts = {action: await http.post(f"{console.url}/sessions/{sid}/{action}", data=form | {"csrf": csrf})
                     for action, form in (("approve", {"call_id": call_id}), ("deny", {"call_id": call_id, "reason": "b says no"}),
                                          ("say", {"text": "b was here"}), ("interrupt", {"text": "b again"}),
                                          ("cancel", {"reason": "b stops it"}))}
        assert live.status_code == 404 and "merger" not in live.text
        assert {action: r.status_code for action, r in posts.items()} == dict.fromkeys(posts, 404)
        assert not any("merger" in r.text or "secret" in r.text for r in posts.values())
        assert await a_view() == before  # still waiting, and nothing was added to its log
