"""The MLflow UI on a sweep, in a real browser (issue 12): Playwright for Python drives Debian's
chromium through the pages a researcher opens after a sweep, starting `mlflow ui` with the very
command the sweep printed. Every step leaves a screenshot in the test's temp dir, and in
$HARNESS_SCREENSHOTS when that is set (the README's docs/ui-*.png come from there)."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from matplotlib.colors import to_hex, to_rgb
from mlflow.tracking import MlflowClient

from harness import record
from harness.record import EXPERIMENT_KIND, RUN_COLOUR
from harness.tracking.ui import MODEL_DEVELOPMENT, SAVED_VIEW_ID, SAVED_VIEW_NAME

from helpers.commands import harness_command, wait_for
from helpers.servers import free_ports
from helpers.sweeps import TINY

CHROMIUM = "/usr/bin/chromium"
NETS = ["plain-8", "resnet-8", "plain-14", "resnet-14"]
TIMEOUT_MS = 90_000  # the UI's first page on a busy 2-core machine


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (.venv/bin/pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    return sync_playwright


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Screenshots:
    """Each step's page, as STEP.png in the test's temp dir and in $HARNESS_SCREENSHOTS."""

    def __init__(self, folder: Path):
        self.folders = [folder] + (
            [Path(os.environ["HARNESS_SCREENSHOTS"])] if os.environ.get("HARNESS_SCREENSHOTS") else []
        )
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def take(self, page, name: str) -> None:
        page.screenshot(path=self.folders[0] / f"{name}.png")
        for extra in self.folders[1:]:
            shutil.copy(self.folders[0] / f"{name}.png", extra / f"{name}.png")
        self.paths += [f / f"{name}.png" for f in self.folders]
        print(f"screenshot: {self.folders[0] / f'{name}.png'}")


def rgb(colour: str) -> str:
    """A hex colour as the browser's computed style writes it."""
    r, g, b = (round(255 * c) for c in to_rgb(colour))
    return f"rgb({r}, {g}, {b})"


def close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel on a first visit; it hides half the page."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


@pytest.mark.slow  # a sweep, then chromium on `mlflow ui`: 1.5 to 2.5 minutes on 2 cores
@pytest.mark.integration
def test_mlflow_ui_opens_on_the_study(tmp_path, store, data_root):
    """A tiny 4-net sweep, then `mlflow ui` on its store: the experiment's runs page in
    model-training mode; the sweep expands to its 4 named children, each in its own colour from
    the depth palette (lighter = plain); the train_error chart draws the 4 runs in those 4
    colours; a child's page shows its effective params, tags that agree with them and its
    error metrics; the parent's page has the study's table and, as artifacts, the report and the
    figures; the saved view "harness: errors" groups the runs by net with error columns."""
    sync_playwright = browser_or_skip()
    shots = Screenshots(tmp_path / "screenshots")
    sweep = harness_command(
        "harness.run",
        "-m",
        "depth=8,14",
        "residual=true,false",
        *TINY,
        f"tracking.uri={store}",
        f"dataset.root={data_root}",
        "threads=1",
        cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]

    # The closing block: the report, the parent run, the command and the page to open.
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("degradation")
    assert experiment.tags[EXPERIMENT_KIND] == MODEL_DEVELOPMENT
    parent = client.search_runs([experiment.experiment_id], record.SWEEPS_FILTER)[0]
    jobs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], record.JOBS_FILTER)}
    assert sorted(jobs) == sorted(NETS)
    out = sweep.stdout
    assert f"MLflow parent run {parent.info.run_id}" in out
    report = re.search(r"^Report: (.+)$", out, re.M).group(1)
    assert Path(report).exists() and Path(report).parent.name == "figures", out[-2000:]
    command = re.search(r"^MLflow UI: (.+ ui --backend-store-uri .+)$", out, re.M).group(1)
    program, *args = shlex.split(command)
    assert Path(program).parent == Path(sys.executable).parent and args == ["ui", "--backend-store-uri", store]
    page_path = re.search(r"then open http://127\.0\.0\.1:5000/(\S+)", out).group(1)
    assert page_path == f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"

    # Colours: the depth's colour for the residual net, a lighter tint for the plain one; 4 distinct.
    colours = {name: run.data.tags[RUN_COLOUR] for name, run in jobs.items()}
    assert len(set(colours.values())) == 4 and parent.data.tags[RUN_COLOUR] not in colours.values()
    for depth in (8, 14):
        plain, resnet = to_rgb(colours[f"plain-{depth}"]), to_rgb(colours[f"resnet-{depth}"])
        assert sum(plain) > sum(resnet), (depth, colours)
    # Params are the effective config: where a param and a tag share a name, they agree.
    for run in jobs.values():
        for key in ("shortcut", "family", "device", "threads", "depth", "residual", "activation", "seed"):
            assert run.data.params[key] == run.data.tags[key], (run.info.run_name, key)
        for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.user", "mlflow.source.git.commit"):
            assert run.data.tags.get(key), (run.info.run_name, key)

    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "mlflow-ui.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [program, *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: healthy(base),
            300,
            "answer from mlflow ui",
            job=server,
            interval=1,
            details=lambda: log.read_text()[-3000:],
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(TIMEOUT_MS)
                check_pages(page, base, page_path, experiment.experiment_id, parent, jobs, colours, shots)
            finally:
                browser.close()
    finally:  # mlflow ui and its uvicorn worker: a process group of their own
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print("screenshots:", *shots.paths, sep="\n  ")


def wait_for_lines(page, metric: str, colours: set[str]) -> None:
    """Wait until the chart of `metric` draws a line in each of `colours`. The charts are searched for
    it first: the UI renders only the cards in view."""
    page.get_by_placeholder("Search metric charts").fill(metric)
    card = (
        page.locator("[data-testid=experiment-view-compare-runs-card]")
        .filter(has=page.get_by_text(metric, exact=True))
        .first
    )
    card.wait_for()
    card.scroll_into_view_if_needed()

    def strokes() -> set[str]:
        return set(card.locator("svg path").evaluate_all("ps => ps.map(p => getComputedStyle(p).stroke)"))

    wait_for(
        lambda: colours <= strokes(),
        TIMEOUT_MS / 1000,
        f"{metric} chart in the runs' colours {sorted(colours)}",
        interval=1,
        details=lambda: f"its lines: {sorted(strokes())}",
    )


def check_pages(page, base, page_path, experiment_id, parent, jobs, colours, shots) -> None:
    # 1. The printed page: the experiment's runs in model-training mode, not MLflow 3's GenAI overview.
    page.goto(f"{base}/{page_path}")
    row = page.locator("[role=row]", has_text="sweep depth=8,14").first
    row.wait_for()
    close_assistant(page)
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    for genai in ("Detect Issues", "Token Usage", "Latency"):
        assert page.get_by_text(genai).count() == 0, genai
    assert page.locator("label:has(input[name=runs-view-mode][value=CHART])").count() == 1
    shots.take(page, "ui-1-experiment")

    # 2. The sweep's parent expands to its 4 named children, each in its colour.
    row.locator("button[data-component-id*=runnamecellrenderer]").click()
    for name in NETS:
        page.get_by_role("link", name=name, exact=True).wait_for()
    shown = page.locator("[data-testid=experiment-view-table-run-color] input").evaluate_all(
        "els => els.map(e => e.value)"
    )
    assert set(colours.values()) <= set(shown), (colours, shown)
    shots.take(page, "ui-2-sweep-expanded")

    # 3. The chart of train_error draws the 4 runs in their 4 colours.
    page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
    want = {rgb(c) for c in colours.values()}
    wait_for_lines(page, "train_error", want)
    page.get_by_placeholder("Search metric charts").fill("error")  # the error charts, side by side
    cards = page.locator("[data-testid=experiment-view-compare-runs-card]")
    cards.filter(has=page.get_by_text("loss", exact=False)).first.wait_for(state="hidden")
    wait_for_lines(page, "val_error", want)
    shots.take(page, "ui-3-error-charts")

    # 4. A child's page: its effective params and its error metrics.
    resnet = jobs["resnet-14"]
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{resnet.info.run_id}?workflowType=machine_learning")
    search = page.get_by_placeholder("Search parameters")
    search.wait_for()
    close_assistant(page)
    params = {"shortcut": "zero_pad", "family": "cifar", "device": "cpu", "threads": "1", "schedule.iterations": "20"}
    for key, value in params.items():  # what the run used, not `auto`/null
        search.fill(key)
        row = page.locator("[role=row]", has=page.get_by_text(key, exact=True))
        row.filter(has=page.get_by_text(value, exact=True)).first.wait_for()
    search.fill("")
    metrics = resnet.data.metrics
    for metric in ("final_train_error", "val_error", "train_error"):
        row = page.locator("[role=row]", has=page.get_by_text(metric, exact=True)).first
        row.wait_for()
        assert float(row.inner_text().split()[-1]) == pytest.approx(metrics[metric]), (metric, row.inner_text())
    shots.take(page, "ui-4-child-run")

    # 5. The parent's page: the study's table (percent), then the report and a figure as artifacts.
    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning")
    page.get_by_text("final training error %").first.wait_for()
    close_assistant(page)
    page.get_by_text("resnet-14", exact=True).first.wait_for()
    page.get_by_text("figures/report.html").first.wait_for()
    if page.get_by_text("Show more", exact=True).count():
        page.get_by_text("Show more", exact=True).first.click()
    shots.take(page, "ui-5-sweep-description")
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("figures", exact=True).first.click()
    page.get_by_text("report.md", exact=True).first.wait_for()
    page.get_by_text("report.html", exact=True).first.click()
    page.frame_locator("iframe").first.get_by_text(re.compile("^Report of sweep")).first.wait_for()
    shots.take(page, "ui-6-report")
    page.get_by_text("error_vs_depth.png", exact=True).first.click()
    image = page.locator("img[src*='error_vs_depth.png'], img[alt*='error_vs_depth']").first
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    shots.take(page, "ui-7-figure")

    # 6. The saved view, listed under Views: runs grouped by net, error columns. (Picked from the
    # menu, MLflow 3.17 drops the page's workflowType and shows the GenAI sidebar; its own link keeps it.)
    page.goto(f"{base}/{page_path}")
    page.get_by_test_id("saved-views-trigger").click()
    page.get_by_text(SAVED_VIEW_NAME, exact=True).last.click()
    page.get_by_text("Group: plain-8", exact=True).first.wait_for()
    page.goto(f"{base}/{page_path}&viewStateShareKey={SAVED_VIEW_ID}")
    for name in NETS:
        page.get_by_text(f"Group: {name}", exact=True).first.wait_for()
    close_assistant(page)
    for column in ("final_train_error", "val_error"):
        page.locator(".ag-header-cell", has_text=column).first.wait_for()
    shots.take(page, "ui-8-saved-view")


def test_run_colours_follow_the_figures_depth_palette():
    """A residual net has its depth's colour of the figures, the plain net a lighter tint of it,
    other residual variants a darker shade: every net of a depth pair tells apart."""
    from harness.palette import DEPTH_COLOURS, SWEEP_COLOUR, depth_colour, run_colour

    for depth in [*DEPTH_COLOURS, 8, 14]:
        resnet, plain = run_colour(depth, True), run_colour(depth, False)
        variant = run_colour(depth, True, "projection", "pre")
        assert resnet == to_hex(depth_colour(depth))
        assert len({resnet, plain, variant, SWEEP_COLOUR}) == 4, depth
        assert sum(to_rgb(plain)) > sum(to_rgb(resnet)), depth


def test_closing_lines_say_how_to_open_the_store(tmp_path, monkeypatch):
    from harness.tracking.ui import closing_lines

    monkeypatch.chdir(tmp_path)
    report = tmp_path / "figures" / "report.html"
    local = closing_lines(f"sqlite:///{tmp_path}/my store/mlflow.db", "3", "abc", report)
    assert local[0] == f"Report: {report}"
    program, *args = shlex.split(local[1].removeprefix("MLflow UI: "))
    assert Path(program) == Path(sys.executable).parent / "mlflow" and args == [
        "ui",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/my store/mlflow.db",
    ]
    assert "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning" in local[2] and "abc" in local[2]
    server = closing_lines("http://head:5000/", "3", "abc", None)
    assert server[0].startswith("Report: none") and server[1].startswith(
        "MLflow UI: http://head:5000/#/experiments/3/runs?workflowType="
    )


def test_progress_lines_without_a_terminal(caplog):
    """tqdm switches itself off without a terminal: a log line instead, at most every 30 s, with
    the iteration, the rate, the running error in percent and the time left."""
    from harness.train import ProgressLog

    caplog.set_level("INFO", logger="harness.train")
    quiet = ProgressLog("resnet-20", 0, 1000, 64, enabled=True)  # 30 s between lines
    quiet.update(10, 0.5)
    off = ProgressLog("resnet-20", 0, 1000, 64, enabled=False, every=0)  # tqdm draws its bar
    off.update(10, 0.5)
    assert caplog.records == []
    progress = ProgressLog("resnet-20", 100, 1000, 64, enabled=True, every=0)
    time.sleep(0.01)
    progress.update(200, 0.1234)
    (line,) = [record.getMessage() for record in caplog.records]
    assert re.fullmatch(
        r"resnet-20: iteration 200/1000, [\d.]+ it/s \(\d+ images/s\), running training error 12\.34%, "
        r"ETA \d+:\d\d min",
        line,
    ), line
