"""Harness for nbflow's real-browser tests: JupyterLab on loopback, driven by headless Chromium.

Nothing here needs the network. The browser is Debian's ``chromium`` driven by
the python ``playwright`` package (``executable_path``; Playwright's own browser
download is never used), and JupyterLab runs from this virtualenv on
127.0.0.1 with a random token, in a temporary root directory, with fresh
config, runtime, data, IPython and workspace directories, so nothing from the
developer's own Jupyter set-up leaks in and nothing is left behind.

Fixtures:

``lab_server``   one JupyterLab server for the whole browser session (stopped,
                 with its kernels, at the end, even after a failure).
``chromium``     one headless Chromium for the session.
``lab``          per test: a fresh browser context and page, and a :class:`Lab`
                 helper that writes notebooks, opens them, runs cells and reads
                 the nbflow run view; its kernels are shut down after the test.
                 JupyterLab by default; ``@pytest.mark.parametrize("lab", UIS,
                 indirect=True)`` runs a test in Notebook 7 too (the same
                 server serves it at ``/notebooks/<file>``).

What the tests know about the run view's DOM (CSS classes, text formats) is
in :class:`ViewSelectors` and :meth:`Lab.read_view`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = os.environ.get("NBFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # git-ignored

# Bounds for every wait in the harness (seconds).
SERVER_START_TIMEOUT = 60
KERNEL_IDLE_TIMEOUT = 60
SERVER_STOP_TIMEOUT = 15

UIS = ("lab", "notebook")  # JupyterLab, and Notebook 7 on the same server
APP_NAMES = {"lab": "JupyterLab", "notebook": "Jupyter Notebook"}  # window.jupyterapp.name


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None if they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the python 'playwright' package is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set NBFLOW_TEST_CHROMIUM)"
    return None


# --------------------------------------------------------------------------------------
# The run view's DOM, as the tests see it. Adjust here if the notebook layer changes.
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewSelectors:
    """CSS selectors of the live run view (nbflow/notebook/widget.py)."""

    view: str = ".nbflow-view"  # the whole run view widget
    header: str = ".nbflow-header"  # run name, state, progress, counts
    counts: str = ".nbflow-counts"  # one element per state with data-state / data-count
    count: str = "[data-state][data-count]"  # inside counts
    state: str = ".nbflow-state"  # the flow run's state, data-state="Running"
    progress: str = ".nbflow-progress"  # done/total, data-done / data-total
    cancel: str = ".nbflow-cancel"  # the Cancel button (ipywidgets Button, has class)
    dag: str = ".nbflow-dag"  # the Graph tab (its inline <svg> has the class too: use .first)
    grid: str = ".nbflow-grid"  # the Task runs tab


SELECTORS = ViewSelectors()

# JavaScript that reads the run view inside ``root`` (a cell) into a plain object:
# {found, state, done, total, counts: {StateName: n}, text}. Used both by
# Lab.read_view and inside wait_for_function polling.
READ_VIEW_JS = """
(root, sel) => {
  // A live view is hidden when its run ends and the final one is displayed below
  // it (both mirror one widget model): read the last visible one.
  const views = Array.from(root.querySelectorAll(sel.view));
  const shown = views.filter(v => v.offsetParent !== null);
  const view = shown.length ? shown[shown.length - 1] : views[views.length - 1];
  if (!view) return {found: false};
  const out = {found: true, state: null, done: null, total: null, counts: {}, text: view.innerText};
  const st = view.querySelector(sel.state);
  if (st) out.state = st.getAttribute('data-state') || st.textContent.trim();
  const pr = view.querySelector(sel.progress);
  if (pr) {
    const d = pr.getAttribute('data-done'), t = pr.getAttribute('data-total');
    if (d !== null) out.done = parseInt(d, 10);
    if (t !== null) out.total = parseInt(t, 10);
  }
  const counts = view.querySelector(sel.counts);
  if (counts) {
    for (const el of counts.querySelectorAll(sel.count)) {
      out.counts[el.getAttribute('data-state')] = parseInt(el.getAttribute('data-count'), 10);
    }
  }
  return out;
}
"""


# --------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running JupyterLab: its URL, token, root directory and process."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log_path: Path

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the server's REST API; returns the decoded JSON (or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def shutdown_kernels(self) -> None:
        """Shut down every session and kernel (a test's notebooks), ignoring errors."""
        with contextlib.suppress(Exception):
            for session in self.api("GET", "/api/sessions"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/sessions/{session['id']}")
        with contextlib.suppress(Exception):
            for kernel in self.api("GET", "/api/kernels"):
                with contextlib.suppress(Exception):
                    self.api("DELETE", f"/api/kernels/{kernel['id']}")


def _stop_server(server: LabServer) -> None:
    """Stop the server and its kernels: API shutdown, then SIGTERM, then SIGKILL (our process only)."""
    proc = server.process
    if proc.poll() is None:
        server.shutdown_kernels()
        with contextlib.suppress(Exception):
            server.api("POST", "/api/shutdown", timeout=5)
        try:
            proc.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(SERVER_STOP_TIMEOUT)


@contextlib.contextmanager
def run_lab_server(base: Path) -> Iterator[LabServer]:
    """Start JupyterLab under ``base`` (root, config, runtime, data, workspaces); stop it on exit."""
    root = base / "root"
    dirs = {name: base / name for name in ("config", "runtime", "data", "ipython", "workspaces")}
    for d in [root, *dirs.values()]:
        d.mkdir(parents=True, exist_ok=True)
    # No "get notified about Jupyter news?" toast over the views (Lab and Notebook 7 read these settings).
    notification = dirs["config"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port = _free_port()
    token = secrets.token_hex(24)
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        IPYTHONDIR=str(dirs["ipython"]),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONUNBUFFERED="1",
    )
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_TOKEN", "PYTHONSTARTUP"):
        env.pop(var, None)
    log_path = base / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
        f"--LabApp.workspaces_dir={dirs['workspaces']}",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, proc, log_path)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                server.api("GET", "/api/status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not answer within {SERVER_START_TIMEOUT}s:\n{server.log_tail()}"
                    ) from None
                time.sleep(0.2)  # polling a starting server's port; nothing to wait on
        yield server
    finally:
        _stop_server(server)


@pytest.fixture(scope="module")
def lab_server() -> Iterator[LabServer]:
    """One JupyterLab per browser-test module (module scope: playwright's sync API keeps an event loop running in the main thread until it stops, which would break later tests)."""
    base = Path(tempfile.mkdtemp(prefix="nbflow-lab-"))
    try:
        with run_lab_server(base) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium driven by playwright; closed at the end of the session."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


# --------------------------------------------------------------------------------------
# Notebooks in the page
# --------------------------------------------------------------------------------------
def write_notebook(path: Path, sources: list[str]) -> Path:
    """Write a notebook of code cells (markdown cells start with '#md\\n')."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source in sources:
        if source.startswith("#md\n"):
            nb.cells.append(nbformat.v4.new_markdown_cell(source[4:]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@dataclass
class Lab:
    """One test's page in JupyterLab, with helpers to run notebooks and read the run view."""

    server: LabServer
    page: Any
    name: str
    ui: str = "lab"  # "lab" (JupyterLab) or "notebook" (Notebook 7)
    sel: ViewSelectors = SELECTORS
    _panel: str | None = field(default=None, repr=False)

    # -- notebooks ----------------------------------------------------------------------
    def write_notebook(self, filename: str, sources: list[str]) -> str:
        write_notebook(self.server.root / filename, sources)
        return filename

    def url(self, filename: str, workspace: str = "") -> str:
        """The page of notebook ``filename`` in this test's UI (a fresh Lab workspace, named after the test)."""
        if self.ui == "notebook":
            return f"{self.server.url}/notebooks/{filename}?token={self.server.token}"
        return f"{self.server.url}/lab/workspaces/{self.name}{workspace}/tree/{filename}?reset&token={self.server.token}"

    def open_notebook(self, filename: str) -> None:
        """Open a notebook and wait until its kernel is idle."""
        self.page.goto(self.url(filename), wait_until="domcontentloaded", timeout=KERNEL_IDLE_TIMEOUT * 1000)
        self.page.wait_for_function(
            """([name, appName]) => {
                const app = window.jupyterapp;
                if (app && app.name !== appName) throw new Error(`expected ${appName}, this page is ${app.name}`);
                const w = app && app.shell && app.shell.currentWidget;
                if (!w || !w.sessionContext || !w.context || w.context.path !== name) return false;
                const s = w.sessionContext.session;
                return !!(s && s.kernel && s.kernel.status === 'idle' && w.content.widgets.length > 0);
            }""",
            arg=[filename, APP_NAMES[self.ui]],
            timeout=KERNEL_IDLE_TIMEOUT * 1000,
        )
        self._panel = "#" + self.page.evaluate("() => window.jupyterapp.shell.currentWidget.id")

    @property
    def panel(self) -> Any:
        """Locator of the open notebook's panel (so nothing else on the page can match)."""
        assert self._panel, "open a notebook first"
        return self.page.locator(self._panel)

    def run_all(self) -> None:
        """Start running every cell; returns at once (the command's promise is NOT awaited)."""
        self.page.evaluate(
            "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }"
        )

    def wait_cells_done(self, timeout: float, cells: int | None = None) -> None:
        """Wait until every code cell (of the first ``cells``) has an execution count and the kernel is idle."""
        self.page.wait_for_function(
            """(n) => {
                const w = window.jupyterapp.shell.currentWidget;
                const k = w.sessionContext.session.kernel;
                if (k.status !== 'idle') return false;
                return w.content.widgets.slice(0, n === null ? undefined : n).every(c => c.model.type !== 'code'
                    || (c.model.executionCount !== null && !c.node.querySelector('.jp-InputPrompt').textContent.includes('*')));
            }""",
            arg=cells,
            timeout=timeout * 1000,
        )

    def output_text(self, cell: int) -> str:
        """The text of cell ``cell``'s outputs."""
        return self.panel.locator(".jp-Cell").nth(cell).locator(".jp-OutputArea").inner_text()

    def wait_output(self, cell: int, text: str, timeout: float = 30) -> None:
        """Wait until cell ``cell``'s outputs hold ``text``."""
        self.panel.locator(".jp-Cell").nth(cell).locator(".jp-OutputArea").get_by_text(text).first.wait_for(
            timeout=timeout * 1000
        )

    def executed(self, cell: int) -> bool:
        """True once cell ``cell`` has finished executing (an execution count, not [*])."""
        prompt = self.panel.locator(".jp-Cell").nth(cell).locator(".jp-InputPrompt").inner_text()
        return bool(re.search(r"\[\d+\]", prompt))

    def wait_executed(self, cell: int, timeout: float = 30) -> None:
        """Wait until cell ``cell`` has finished executing (its reply comes after its output)."""
        self.page.wait_for_function(
            "(el) => /\\[\\d+\\]/.test(el.querySelector('.jp-InputPrompt').textContent)",
            arg=self.panel.locator(".jp-Cell").nth(cell).element_handle(),
            timeout=timeout * 1000,
        )

    def error_output(self) -> str | None:
        """Text of the first error (traceback) output in the notebook, if any."""
        tracebacks = self.panel.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
        return tracebacks.first.inner_text() if tracebacks.count() else None

    # -- the run view ----------------------------------------------------------------------
    def view(self, cell: int) -> Any:
        """Locator of the run view in the output of cell ``cell``."""
        return self.panel.locator(".jp-Cell").nth(cell).locator(f"{self.sel.view}:visible").last

    def final_view(self, cell: int, timeout: float = 30) -> Any:
        """Wait for the finished view of cell ``cell`` to settle; its locator.

        A run's output ends as the static picture, and the front end mounts the
        view again inside it (view.js): until then the first view may still be
        the one on the page, or the new one may not have its grid yet. Settled:
        the view inside the picture, each of its canvases painted with all its
        group's runs.
        """
        handle = self.panel.locator(".jp-Cell").nth(cell).element_handle()
        self.page.wait_for_function(
            """(root) => {
                const view = root.querySelector('.nbflow-static .nbflow-view');
                if (!view) return false;
                const canvases = [...view.querySelectorAll('.nbflow-canvas')];
                return canvases.length > 0 && canvases.every(c => c.dataset.runs && c.dataset.painted === c.dataset.runs);
            }""",
            arg=handle,
            timeout=timeout * 1000,
        )
        return self.panel.locator(".jp-Cell").nth(cell).locator(f".nbflow-static {self.sel.view}").last

    def read_view(self, cell: int) -> dict:
        """The view's state, done/total and counts per state, as the page shows them now."""
        handle = self.panel.locator(".jp-Cell").nth(cell).element_handle()
        return self.page.evaluate(
            f"([root, sel]) => ({READ_VIEW_JS})(root, sel)", [handle, self.sel.__dict__]
        )

    def watch_view(self, cell: int, until_js: str, timeout: float) -> list[dict]:
        """Sample the view at every animation frame until ``until_js(view)`` is true.

        Returns the distinct samples seen, each saying whether the cell was still
        executing (so a test can tell live updates from a final redraw). ``until_js`` is a JS
        expression over ``v`` (what READ_VIEW_JS returns).
        """
        handle = self.panel.locator(".jp-Cell").nth(cell).element_handle()
        self.page.evaluate("() => { window.__nbflowSamples = []; }")
        self.page.wait_for_function(
            f"""([root, sel]) => {{
                const v = ({READ_VIEW_JS})(root, sel);
                if (!v.found) return false;
                // The cell is still executing while its prompt reads [*]. (The kernel's
                // status is no guide: an awaiting %%flow cell lets the kernel go idle
                // between the widget messages it handles meanwhile.)
                const prompt = root.querySelector('.jp-InputPrompt');
                const executing = !!prompt && prompt.textContent.includes('*');
                const key = JSON.stringify([v.state, v.done, v.total, v.counts, executing]);
                const seen = window.__nbflowSamples;
                if (!seen.length || seen[seen.length - 1].key !== key) {{
                    seen.push({{key, state: v.state, done: v.done, total: v.total,
                               counts: v.counts, executing, t: performance.now()}});
                }}
                return ({until_js});
            }}""",
            arg=[handle, self.sel.__dict__],
            polling="raf",
            timeout=timeout * 1000,
        )
        return self.page.evaluate("() => window.__nbflowSamples")

    def screenshot(self, locator: Any, name: str) -> Path:
        """Save a screenshot of ``locator`` in the artifacts (Notebook 7's get a ``notebook-`` prefix)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / (name if self.ui == "lab" else f"{self.ui}-{name}")
        locator.screenshot(path=str(path))
        return path


@pytest.fixture
def lab(lab_server: LabServer, chromium: Any, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh browser context and page for one test, in JupyterLab or (param "notebook") Notebook 7; its kernels are shut down afterwards."""
    ui = getattr(request, "param", "lab")
    assert ui in UIS, ui
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:60] + "-" + secrets.token_hex(3)
    helper = Lab(lab_server, page, name, ui)
    try:
        yield helper
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"), full_page=True)
            with contextlib.suppress(Exception):
                (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(console))
            with contextlib.suppress(Exception):
                (ARTIFACTS / f"{name}-server.log").write_text(lab_server.log_tail(100_000))
        with contextlib.suppress(Exception):
            context.close()
        lab_server.shutdown_kernels()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    # Lets the ``lab`` fixture know if the test failed, to keep a screenshot and logs.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
