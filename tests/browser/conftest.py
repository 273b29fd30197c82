"""Fixtures of the browser tests: a real TensorBoard process serving a logdir, and
headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
sys.path.insert(0, os.path.join(REPO, "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardProcess:
    """``tensorboard --logdir`` on a free port of 127.0.0.1, with helpers to call its routes."""

    def __init__(self, logdir: str, extra_args=()):
        self.logdir = logdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
        self.log_path = os.path.join(logdir, f"tensorboard-{self.port}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [tensorboard, "--logdir", logdir, "--host", "127.0.0.1", "--port", str(self.port), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def get(self, path: str, params: Optional[Dict[str, Any]] = None):
        """(status, body bytes, headers) of GET /<path>?params."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=60) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def aevis(self, route: str, **params) -> Any:
        status, body, _ = self.get(f"/data/plugin/aevis/{route}", params)
        assert status == 200, f"{route} answered {status}: {body[:300]!r}"
        return json.loads(body)

    def wait_ready(self, expect_runs: int, timeout: float = 90.0) -> None:
        """Until the AEVis plugin is listed and its runs route lists ``expect_runs`` runs."""
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, body, _ = self.get("/data/plugin/aevis/runs")
                last = f"{status} {body[:200]!r}"
                if status == 200 and len(json.loads(body).get("runs", [])) >= expect_runs:
                    return
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                last = str(e)
            time.sleep(0.5)
        raise RuntimeError(f"tensorboard not ready after {timeout}s (last answer: {last}):\n{self.log()}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.aevis_errors = errors  # uncaught errors of the page and the plugin iframe
    yield pg
    context.close()


def start_tensorboard(logdir: str, expect_runs: int) -> TensorBoardProcess:
    tb = TensorBoardProcess(logdir)
    try:
        tb.wait_ready(expect_runs)
    except Exception:
        tb.close()
        raise
    return tb


def dashboard(page, tb: TensorBoardProcess, hash_state: str = ""):
    """Open the AEVis tab in a new document and return the plugin iframe's Frame.

    A page already on TensorBoard first leaves it: a hash-only navigation keeps the old
    iframe, whose stale drawing would satisfy the caller's selectors before the new state
    is drawn."""
    if page.url.startswith(tb.url):
        page.goto("about:blank")
    page.goto(f"{tb.url}/#aevis{hash_state}")
    page.wait_for_selector('iframe[src*="plugin_entry.html?name=aevis"]', timeout=60_000)
    handle = page.query_selector('iframe[src*="plugin_entry.html?name=aevis"]')
    frame = handle.content_frame()
    assert frame is not None
    frame.wait_for_selector(".aevis", timeout=60_000)
    return frame


def screenshot(page, name: str) -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    page.screenshot(path=path, full_page=True)
    return path


@pytest.fixture
def logdir(tmp_path) -> Iterator[str]:
    path = tmp_path / "logs"
    path.mkdir()
    yield str(path)
