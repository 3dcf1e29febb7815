"""A real JupyterLab in Debian's chromium: run 01_quickstart, move the depth slider with the keyboard, see the
figure change, and keep a screenshot in test-artifacts/ (git-ignored).

The server runs on 127.0.0.1 with a random token and temporary config, runtime, workspace and settings
folders; RESVIZ_SMOKE=1 and RESVIZ_OUT are in its environment, so the kernel inherits them. Chromium is
`/usr/bin/chromium` (or $RESVIZ_CHROMIUM), driven by the playwright package; never a downloaded browser.
Without chromium or playwright the test skips, under CI (CI=true) it fails.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("RESVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
LAB_START_S = 60
RUN_ALL_S = 150  # the notebook trains four tiny nets: ~30 s on a busy 2-core machine
NOTEBOOK_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden) "  # the visible notebook only (Lab keeps hidden tabs)
# Lab's news/update toast can cover the page: switch it off in the (temporary) user settings.
NOTIFICATION_SETTINGS = ("@jupyterlab/apputils-extension", "notification.jupyterlab-settings",
                         {"fetchNews": "false", "checkForUpdates": False})


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright; never `playwright install`)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if _under_ci():
            pytest.fail(message + " — required under CI")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + LAB_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer {url} within {LAB_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base URL, token, root folder) of a JupyterLab serving a copy of 01_quickstart.ipynb (and sizes.py)."""
    _require_browser()
    work = tmp_path_factory.mktemp("lab")
    root = work / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    for helper in NOTEBOOK.parent.glob("*.py"):  # sizes.py: the notebooks import it from beside them
        shutil.copy(helper, root / helper.name)
    settings = work / "settings"
    plugin, file, values = NOTIFICATION_SETTINGS
    (settings / plugin).mkdir(parents=True)
    (settings / plugin / file).write_text(json.dumps(values))
    env = {
        **os.environ,
        "RESVIZ_SMOKE": "1",
        "RESVIZ_OUT": str(work / "out"),
        "RESVIZ_DATA": str(ROOT / "data"),  # the notebook copy lives outside the checkout: reuse its dataset cache
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
    }
    env.pop("RESVIZ_DATASET", None)
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = work / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/api/status?token={token}", proc, log)
        yield base, token, root
    finally:
        proc.terminate()  # the server shuts its kernels down
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # over 3 s on the 2-core machine: outside the quick loop
def test_depth_slider_changes_the_dashboard_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    base, token, _ = lab
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_01_quickstart.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?reset&token={token}")
            page.wait_for_selector(NOTEBOOK_PANEL + ".jp-Cell", timeout=LAB_START_S * 1000)
            page.wait_for_function("() => window.jupyterapp && jupyterapp.shell.currentWidget"
                                   " && jupyterapp.shell.currentWidget.sessionContext", timeout=30_000)
            page.evaluate("async () => { await jupyterapp.shell.currentWidget.sessionContext.ready;"
                          " await jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # the dashboard's title names the depth; at first the shallowest (8)
            plot = NOTEBOOK_PANEL + ".widget-vbox .js-plotly-plot"  # the dashboard's FigureWidget
            title = page.locator(plot + " .gtitle").first
            expect(title).to_contain_text("depth 8", timeout=RUN_ALL_S * 1000)
            busy = page.locator(NOTEBOOK_PANEL + ".jp-InputArea-prompt", has_text="*")
            expect(busy).to_have_count(0, timeout=RUN_ALL_S * 1000)  # every cell ran ("[*]" = running)
            stderr = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
            errors = page.locator(NOTEBOOK_PANEL + stderr, has_text="Traceback")
            expect(errors).to_have_count(0)
            ticks = page.locator(plot + " .xtick text").first.locator("xpath=../..")  # the x axis' tick layer
            before_ticks = ticks.locator("text").all_text_contents()
            before_title = title.text_content()

            handle = page.locator(NOTEBOOK_PANEL + ".widget-vbox .widget-slider .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            handle.press("ArrowRight")  # depth 8 -> 14

            expect(title).to_contain_text("depth 14", timeout=30_000)
            readout = page.locator(NOTEBOOK_PANEL + ".widget-vbox .widget-readout").first
            expect(readout).to_have_text("14")
            expect(ticks.locator("text").last).not_to_have_text(before_ticks[-1], timeout=10_000)
            after_ticks = ticks.locator("text").all_text_contents()
            assert title.text_content() != before_title
            # a ResNet-14 has 13 norm layers (indices 0..12) against ResNet-8's 7 (0..6): the x range grew
            assert max(map(float, after_ticks)) > max(map(float, before_ticks)), (before_ticks, after_ticks)
            assert re.search(r"depth 14, plain and ResNet, step \d+", title.text_content())

            dashboard = page.locator(NOTEBOOK_PANEL + ".widget-vbox").first
            dashboard.scroll_into_view_if_needed()
            dashboard.screenshot(path=str(shot))
            page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart_page.png"))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
