"""The report card in a real browser (Debian's chromium, headless, DevTools over a pipe).

Opens the card from a file:// URL and asserts what a reader would notice: no console errors, no
network requests, every image decoded, a page that is not blank, and a printable PDF. A control page
proves the harness does see console errors and network requests when there are some.
Set XCOUNTER_ARTIFACTS=DIR to keep the screenshot and PDF for a look.
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xcounter.report import write_html
from xcounter.report.sample import sample_explanation

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "chrome:", "devtools:")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("the browser test needs Debian's chromium: apt-get install -y chromium")


def _high_fd(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        # the child's ends are moved above fd 9 so that wiring them to 3 and 4 cannot clobber one another
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        to_browser_read, from_browser_write = (_high_fd(fd) for fd in (to_browser_read, from_browser_write))

        def wire_fds() -> None:  # child side: the protocol pipes must be fds 3 and 4 (kept by pass_fds)
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self.process = subprocess.Popen([_chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=wire_fds, pass_fds=(3, 4),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._read], [], [], remaining)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        os.write(self._write, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive(deadline)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    tools = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    yield tools
    tools.close()


def open_page(tools: DevTools, url: str) -> str:
    """Navigate a fresh tab to `url` with console, log and network monitoring; returns its session."""
    target = tools.send("Target.createTarget", url="about:blank")["targetId"]
    session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        tools.send(f"{domain}.enable", session)
    tools.send("Emulation.setDeviceMetricsOverride", session, width=1200, height=900, deviceScaleFactor=1,
               mobile=False)
    tools.send("Page.navigate", session, url=url)
    tools.wait_for("Page.loadEventFired", session)
    return session


def problems(tools: DevTools, session: str) -> dict[str, list[str]]:
    """Console errors, uncaught exceptions, error log entries and non-local requests seen by `session`."""
    found: dict[str, list[str]] = {"console": [], "network": []}
    for event in tools.events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found["console"].append(json.dumps(params.get("args"))[:200])
        elif method == "Runtime.exceptionThrown":
            found["console"].append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            found["console"].append(params["entry"].get("text", "")[:200])
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                found["network"].append(url[:200])
    return found


def evaluate(tools: DevTools, session: str, expression: str):
    result = tools.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
    assert "exceptionDetails" not in result, result
    return result["result"]["value"]


IMAGE_CHECK = """Promise.all(Array.from(document.images).map(img =>
    img.decode().then(() => true, () => false).then(decoded =>
        ({decoded, width: img.naturalWidth, alt: img.alt, src: img.src.slice(0, 22)}))))"""


def test_card_in_chromium(browser, tmp_path):
    explanation = sample_explanation(source_name='scan "<b>1</b>".png')
    card = write_html(explanation, tmp_path / "card.html")
    session = open_page(browser, card.resolve().as_uri())

    images = evaluate(browser, session, IMAGE_CHECK)
    assert len(images) == 4 + 3 * 10 + 1  # and the whole generator edit beside the pruned shortcut
    for image in images:
        assert image["decoded"] and image["width"] > 0, image
        assert image["alt"].strip() and image["src"] == "data:image/png;base64,"
    assert evaluate(browser, session, "document.scripts.length") == 0
    assert evaluate(browser, session, "document.querySelectorAll('b').length") == 0  # file name stayed text
    title = evaluate(browser, session, "document.querySelector('h1').textContent")
    assert title == "Counterfactual explanation report"

    metrics = browser.send("Page.getLayoutMetrics", session)["cssContentSize"]
    shot = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1200, "height": min(metrics["height"], 4000), "scale": 1})
    png = base64.b64decode(shot["data"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 1500 and pixels.std() > 20  # a long page with content, not a blank one
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200  # images and text, not flat fills
    pdf = base64.b64decode(browser.send("Page.printToPDF", session, printBackground=True)["data"])
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 2

    found = problems(browser, session)
    assert found == {"console": [], "network": []}
    if os.environ.get("XCOUNTER_ARTIFACTS"):
        out = Path(os.environ["XCOUNTER_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "card-screenshot.png").write_bytes(png)
        (out / "card.pdf").write_bytes(pdf)


def test_harness_sees_errors_and_requests(browser, tmp_path):
    """The checks above could not fail if the harness were blind: show it catches both."""
    page = tmp_path / "control.html"
    page.write_text('<html><body><img alt="x" src="http://127.0.0.1:9/probe.png">'
                    '<script>console.error("control error")</script></body></html>', encoding="utf-8")
    session = open_page(browser, page.resolve().as_uri())
    found = problems(browser, session)
    assert any("control error" in text for text in found["console"])
    assert found["network"] == ["http://127.0.0.1:9/probe.png"]
