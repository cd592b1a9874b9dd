"""The page for people at ``/``: served without a key under a strict Content-Security-Policy,
by a script that never puts the server's text in as HTML nor the key in an address; and, in
headless Chromium (skipped, with how to install it, where Chromium is absent), a search typed
into it (the key, the query, Enter) showing the version that answered, its latency and the
hits, and the A/B report with its table and latency plot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3
carries commands in, fd 4 answers and events out, each a JSON text ended by a NUL byte), so
that the test types into the page as a person does without a websocket client or a driver;
``--dump-dom`` alone cannot type, and the key must never travel in the page's address.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration

MODEL = "all-minilm-l6-v2"
VERSION = f"{MODEL}@v1"
TARGET = ("The lighthouse keeper on Skellig Michael writes every passing trawler into a "
          "leather ledger before dawn.")
#: shown as text, never parsed as HTML: no <img> and no <b> may appear in the hits
MARKUP = "Tags such as <img src=x onerror=alert(1)> and <b>bold</b> are plain text here."
DOCS = [TARGET,
        "Sourdough needs a starter fed with flour and water for about a week.",
        "A glacier moves downhill under its own weight, grinding the rock beneath it.",
        MARKUP]
QUERY = "who records the fishing boats that pass the lighthouse"


def _static(name: str) -> str:
    return resources.files("pgfleet.api").joinpath("static", name).read_text("utf-8")


def _directives(policy: str) -> dict[str, str]:
    pairs = (d.strip().split(None, 1) for d in policy.split(";") if d.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


# ------------------------------------------------------------------ without a browser
def test_the_page_and_its_script_are_served_without_a_key_under_a_strict_policy(api):
    page = api.get("/", key="")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/page.js"></script>' in page.text
    script = api.get("/page.js", key="")
    assert script.status_code == 200, script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.text == _static("page.js")
    for response in (page, script):
        policy = _directives(response.headers["content-security-policy"])
        # scripts fall back to default-src: this origin's files only, nothing inline, no eval
        assert policy["default-src"] == "'self'", policy
        assert "script-src" not in policy, policy
        assert "'unsafe-inline'" not in policy["default-src"]
        assert "'unsafe-eval'" not in response.headers["content-security-policy"]
        assert policy["frame-ancestors"] == "'none'", policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in response.headers


def test_the_page_puts_no_server_text_in_as_html_and_loads_nothing_else():
    js, html = _static("page.js"), _static("index.html")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                 "DOMParser", "createContextualFragment", "srcdoc", "eval(", "Function(",
                 "setAttribute(\"on", "javascript:"):
        assert sink not in js, sink
    assert "textContent" in js and "createTextNode" in js
    # the key stays in this tab's sessionStorage: never in an address, a cookie or localStorage
    for leak in ("location", "history.", "document.cookie", "localStorage", "?key", "&key"):
        assert leak not in js, leak
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL | re.IGNORECASE)
    assert scripts == [(' src="/page.js"', "")], scripts
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE), "inline event handler"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "@import" not in html and "url(" not in html
    # every control has a label
    for control in re.findall(r'<input\b[^>]*\bid="([^"]+)"', html):
        assert f'for="{control}"' in html, control


# ------------------------------------------------------------------ in headless Chromium
class Chromium:
    """A headless Chromium and one page of it, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile: Path):
        to_child, self._to = os.pipe()
        self._from, from_child = os.pipe()
        # the child's ends well above 4, so that putting them on fds 3 and 4 clobbers nothing
        to_child, from_child = _high(to_child), _high(from_child)
        self.log_path = profile / "chromium.log"
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--no-default-browser-check",
                 f"--user-data-dir={profile / 'data'}", "--window-size=1280,1000",
                 "--remote-debugging-pipe", "about:blank"]
        redirect = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["/bin/bash", "-c", redirect, binary, *flags],
                                            pass_fds=(to_child, from_child),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(to_child)
        os.close(from_child)
        self._writer = os.fdopen(self._to, "wb", buffering=0)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self._ids = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")[-3000:]

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             browser: bool = False, timeout_s: float = 30.0) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if not browser:
            assert self.session is not None, "no page attached"
            message["sessionId"] = self.session
        self._writer.write(json.dumps(message).encode() + b"\0")
        while True:
            try:
                answer = self._messages.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"Chromium did not answer {method}\n{self.log()}") from None
            if answer is None:
                raise AssertionError(f"Chromium went away during {method}\n{self.log()}")
            if answer.get("id") != self._ids:
                self.events.append(answer)
                continue
            if "error" in answer:
                raise AssertionError(f"{method}: {answer['error']}")
            return answer["result"]

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return self.events
            if message is not None:
                self.events.append(message)

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        self.session = self.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                           "flatten": True},
                                 browser=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000,
                                                         "deviceScaleFactor": 1,
                                                         "mobile": False})
        self.call("Page.navigate", {"url": url})
        wait_until(lambda: self.js("document.readyState === 'complete' && "
                                   f"location.href === {json.dumps(url)}"),
                   30, interval_s=0.1, message=f"{url} loaded")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A left click in the middle of the element, as the mouse makes it."""
        box = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
                      " el.scrollIntoView({block: 'center'});"
                      " const r = el.getBoundingClientRect();"
                      " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "button": "left",
                                                   "clickCount": 1, **box})

    def type(self, selector: str, text: str) -> None:
        """Click into a field and type into it (the text as one input, as an IME sends it)."""
        self.click(selector)
        assert self.js(f"document.activeElement === document.querySelector("
                       f"{json.dumps(selector)})"), f"{selector} did not take the focus"
        self.call("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {
                "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
                **({"text": "\r"} if kind == "keyDown" else {})})

    def screenshot(self, path: Path) -> bytes:
        shot = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.call("Browser.close", browser=True, timeout_s=10)
        except (AssertionError, OSError):
            pass
        finally:
            self._writer.close()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
            self._reader.join(15)


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def _page_state(browser: Chromium) -> dict[str, Any]:
    return browser.js("""(() => {
      const meta = document.getElementById("answer-meta");
      const plot = document.getElementById("ab-plot");
      const table = document.getElementById("ab-table");
      return {
        meta: meta.textContent, error: meta.classList.contains("error"),
        version: meta.dataset.version || null,
        hits: Array.from(document.querySelectorAll("#hits > li"),
                         (li) => ({doc_id: Number(li.dataset.docId), text: li.textContent})),
        hit_tags: Array.from(document.querySelectorAll("#hits *"), (el) => el.tagName),
        table: table && Array.from(table.rows,
                                   (row) => Array.from(row.cells, (c) => c.textContent)),
        caption: table && table.caption && table.caption.textContent,
        report: document.getElementById("ab-report").textContent,
        ab_error: (document.querySelector("#ab-report .error") || {}).textContent || null,
        plot: {hidden: plot.hidden, src: plot.src, complete: plot.complete, alt: plot.alt,
               width: plot.naturalWidth, height: plot.naturalHeight},
      };
    })()""")


def test_a_search_typed_into_the_page_shows_its_version_latency_hits_and_the_ab_report(
        api, fleet, clean):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver")
    ids = {content: clean.execute("INSERT INTO docs (content) VALUES (%s) RETURNING id",
                                  (content,)).fetchone()[0] for content in DOCS}
    wait_until(lambda: clean.execute("SELECT count(*) FROM embeddings WHERE doc_id = ANY(%s)",
                                     (list(ids.values()),)).fetchone()[0] == len(ids),
               120, message="the page's docs embedded")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "api-page.png").unlink(missing_ok=True)

    with tempfile.TemporaryDirectory(prefix="pgfleet-chromium-") as profile:
        browser = Chromium(chromium, Path(profile))
        try:
            browser.open(api.url + "/")
            # page.js ran (the policy let this origin's script in) and knows of no key yet
            assert browser.js("document.getElementById('key-state').textContent") == \
                "no key yet"

            browser.type("#api-key", api.key)
            browser.press_enter()
            wait_until(lambda: browser.js("document.getElementById('key-state').textContent")
                       == "key set for this tab", 10, message="the key taken")
            assert browser.js("sessionStorage.getItem('pgfleet-key')") == api.key
            assert browser.js("document.getElementById('api-key').value") == ""

            browser.type("#query", QUERY)
            browser.press_enter()
            state = wait_until(lambda: (s := _page_state(browser)) and
                               (s["version"] or s["error"]) and s, 90, interval_s=0.2,
                               message="the search answered on the page")
            assert not state["error"], state["meta"]
            assert state["version"] == VERSION, state
            found = re.match(rf"answered by {re.escape(VERSION)} in (\d+\.\d) ms "
                             r"\((\d+) ms round trip\)", state["meta"])
            assert found, state["meta"]
            assert float(found.group(1)) > 0
            assert f"; {len(DOCS)} hits" in state["meta"], state["meta"]
            # the nearest doc first, every doc of ours listed, the markup shown as text
            assert state["hits"][0]["doc_id"] == ids[TARGET], state["hits"]
            assert state["hits"][0]["text"].endswith(TARGET), state["hits"][0]
            assert re.match(r"0\.\d{3} · doc \d+ · ", state["hits"][0]["text"])
            assert {h["doc_id"] for h in state["hits"]} == set(ids.values())
            assert any(h["text"].endswith(MARKUP) for h in state["hits"]), state["hits"]
            assert set(state["hit_tags"]) == {"LI", "SPAN"}, state["hit_tags"]
            # the page showed what the API answers
            direct = api.post("/v1/search", {"query": QUERY, "k": 10})
            assert direct.status_code == 200, direct.text
            assert [h["doc_id"] for h in direct.json()["hits"]] == \
                [h["doc_id"] for h in state["hits"]]

            # the A/B report of the active model, whose name the page filled in
            wait_until(lambda: browser.js("document.getElementById('ab-name').value") == MODEL,
                       20, message="the model's name filled in")
            browser.click("#ab-button")
            state = wait_until(lambda: (s := _page_state(browser)) and (s["ab_error"] or (
                not s["plot"]["hidden"] and s["plot"]["complete"] and s["plot"]["width"]))
                and s, 60, interval_s=0.2, message="the A/B report and its plot on the page")
            assert not state["ab_error"] and state["table"], state["report"]
            head, *rows = state["table"]
            assert head == ["version", "traffic", "requests", "p50 ms", "p95 ms", "errors",
                            "cache hits", "MRR", "coverage"]
            report = api.get(f"/v1/ab/{MODEL}").json()
            [v1] = [r for r in rows if r[0] == "v1"]
            [expected] = [v for v in report["versions"] if v["version"] == "v1"]
            assert v1[1] == "100%" and int(v1[2]) == expected["requests"] >= 2, (v1, expected)
            assert float(v1[3]) == pytest.approx(expected["latency_ms"]["p50"], abs=0.06)
            assert v1[8] == "100%", v1
            assert state["caption"].startswith(f"{MODEL}: the last 24 h"), state["caption"]
            assert state["plot"]["src"].startswith("blob:"), state["plot"]
            assert state["plot"]["width"] >= 400 and state["plot"]["height"] >= 200
            assert state["plot"]["alt"].startswith(MODEL)

            html = browser.js("document.documentElement.outerHTML")
            assert api.key not in html and api.key not in browser.js("location.href")
            (artifacts / "api-page.html").write_text(html, "utf-8")
            shot = browser.screenshot(artifacts / "api-page.png")
            assert shot.startswith(b"\x89PNG") and len(shot) > 10_000
            problems = [e for e in browser.drain()
                        if e.get("method") == "Runtime.exceptionThrown"
                        or "Content Security Policy" in json.dumps(e)]
            assert not problems, problems
        finally:
            browser.close()
