"""The dashboard in a real browser: a node killed while the job page is open shows as a
re-formation, and its replacement, without a reload; log text is never run as HTML; sign-in
takes client tokens only; cancel works from the page and needs the session's CSRF token."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from contract.states import JobState
from tests.dashboard.conftest import sign_in, tls_context
from tests.integration.harness import ROOT, wait_for

DOCS_SHOT = ROOT / "docs" / "img" / "dashboard-recovery.png"
HTML_LINE = "<script>window.__xss = 1</script><b id=injected>bold</b>"


def submit_elastic(client, tmp_path: Path):
    """The elastic example on 3 nodes (at least 2), in its default fault-tolerance mode; its
    setup prints a line of HTML."""
    work = tmp_path / "job"
    shutil.copytree(ROOT / "examples" / "elastic", work)
    (work / "job.toml").write_text(textwrap.dedent(f"""
        name = "dash"
        setup = "echo '{HTML_LINE}'"
        run = "python train.py --steps 100000 --ckpt-every 20 --step-sleep 0.05"
        [nodes]
        count = 3
        min = 2
    """))
    return client.submit(work / "job.toml")


def reform_rows(page) -> list[dict]:
    return page.eval_on_selector_all("#timeline tr.reform", """rows => rows.map(r => ({
        kind: r.dataset.kind, generation: Number(r.dataset.generation),
        members: r.querySelector('.members').textContent, text: r.textContent}))""")


def reformed_at(client, job_id: str, victim: str) -> float | None:
    for event in client.watch(job_id, follow=False):
        if event.kind in ("generation.reformed", "generation.started") and \
                victim in event.data.get("old_members", []) and \
                victim not in event.data.get("new_members", []):
            return event.time.timestamp()
    return None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_node_shows_as_a_reformation_and_its_replacement_without_reload(
        coordd, client, page, tmp_path):
    record = submit_elastic(client, tmp_path)
    sign_in(page, coordd.url, coordd.token)
    page.wait_for_url(coordd.url)
    page.goto(f"{coordd.url}jobs/{record.id}")
    page.evaluate("window.__same_page = true")  # gone if the page reloads
    wait_for(lambda: page.text_content("[data-field=step]") not in ("-", None) and
             int(page.text_content("[data-field=step]")) >= 40, 120, what="step 40 on the page")
    first = list(client.get(record.id).node_ids)
    victim = first[1]
    coordd.kill_node(victim, signal.SIGKILL)

    rows = wait_for(lambda: [r for r in reform_rows(page) if victim in r["members"]
                             and "lost: " + victim in r["text"]], 60, interval=0.1,
                    what="the re-formation on the page")
    seen = time.time()
    page.screenshot(path=tmp_path / "job-mid-recovery.png", full_page=True)
    assert seen - reformed_at(client, record.id, victim) < 2.0 + 0.5  # + this loop's polling
    assert rows[0]["kind"] in ("in_place", "restart")

    # The replacement joins: a re-formation that adds a node the job did not have.
    added = wait_for(lambda: [r for r in reform_rows(page) if "added: node-" in r["text"]
                              and not any(n in r["text"].split("added: ")[1] for n in first)],
                     90, interval=0.2, what="the replacement on the page")
    assert added
    assert page.locator("#nodes tr[data-node]").count() >= 4  # the three first, the newcomer
    assert page.evaluate("window.__same_page") is True

    # A log line of HTML is text: shown literally, nothing of it parsed or run.
    page.wait_for_function("t => document.getElementById('logs').textContent.includes(t)",
                           arg=HTML_LINE, timeout=20_000)
    assert page.locator("#logs #injected").count() == 0
    assert page.evaluate("window.__xss") is None

    # Cancel from the page, after the confirm dialog.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#state').textContent === "
                           "'CANCELLED'", timeout=60_000)
    assert client.get(record.id).state == JobState.CANCELLED
    if DOCS_SHOT.parent.is_dir() and not DOCS_SHOT.exists():  # refreshed by deleting it
        shutil.copy(tmp_path / "job-mid-recovery.png", DOCS_SHOT)


def call(coordd, path: str, method: str = "GET", body: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    """One HTTPS request, verifying coordd's certificate against its CA."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(coordd.url + path.lstrip("/"), data=data, method=method,
                                     headers={"content-type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, context=tls_context(coordd)) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def test_sign_in_takes_client_tokens_only_and_cancel_needs_the_csrf_token(
        coordd, client, page, tmp_path):
    (tmp_path / "job.toml").write_text('name = "sleeper"\nrun = "sleep 600"\n[nodes]\ncount = 1\n')
    record = client.submit(tmp_path / "job.toml")

    shown = coordd.cli("dashboard", "--no-open")
    assert shown.returncode == 0 and shown.stdout.strip() == coordd.url, shown.stderr

    assert call(coordd, "/api/jobs")[0] == 401  # no session
    assert call(coordd, "/login", "POST", {"token": "x.y"})[0] == 401
    assert call(coordd, "/login", "POST", {"token": coordd.agent_token})[0] == 403
    sign_in(page, coordd.url, coordd.agent_token)
    page.wait_for_selector("#error:has-text('agent tokens cannot sign in')")
    assert page.url.endswith("/login") and not page.context.cookies()

    sign_in(page, coordd.url, coordd.token)
    page.wait_for_selector("#jobs tbody tr[data-job]")
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert cookie["expires"] > time.time()
    session = {"cookie": f"{cookie['name']}={cookie['value']}"}

    status, _, answer = call(coordd, f"/api/jobs/{record.id}/cancel", "POST", {}, session)
    assert status == 403 and "CSRF" in answer["error"]
    csrf = call(coordd, "/api/session", headers=session)[2]["csrf"]
    cross_site = {**session, "x-csrf-token": csrf, "origin": "https://evil.example"}
    assert call(coordd, f"/api/jobs/{record.id}/cancel", "POST", {}, cross_site)[0] == 403
    assert client.get(record.id).state != JobState.CANCELLED
    status, _, answer = call(coordd, f"/api/jobs/{record.id}/cancel", "POST", {},
                             {**session, "x-csrf-token": csrf})
    assert status == 200, answer
    assert client.wait(record.id, timeout=60).state == JobState.CANCELLED

    # A revoked token's sessions end at once.
    subprocess.run([str(Path(coordd.process.args[0])), "token", "revoke",
                    coordd.token.partition(".")[0], "--state-dir", str(coordd.state_dir)],
                   check=True, capture_output=True)
    wait_for(lambda: call(coordd, "/api/jobs", headers=session)[0] == 401, 10,
             what="the revoked token's session to end")
