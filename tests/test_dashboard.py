"""Dashboard: the reader on real Ray Tune experiment folders, the static export, the CLI, and the
page itself in headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray.cloudpickle

from tdmpc_ray.cli import main
from tdmpc_ray.dashboard import ResultsReader, export_html, make_server
from tdmpc_ray.dashboard.results import (
    MAX_FILE_BYTES,
    effective_config,
    split_config,
    summarize_rows,
)
from tdmpc_ray.dashboard.server import DashboardServer
from tdmpc_ray.tasks import MT30

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
D_COEFS = [0.0, 0.2, 0.4, 0.45]
FAILING_D_COEF = 0.2
REPORTS = 4
EPISODES = 6
"""Episodes per task of the synthetic evaluations: enough for per-task intervals."""
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")
"""Also save the page's screenshot here (docs/results/dashboard.png is made this way)."""

# Tune workers cannot import this test module: ship the trainable's helpers by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def evaluation(seed: int, quality: float, step: int) -> dict:
    """A synthetic evaluation in the real result format (`score._scores`: returns, env seeds,
    intervals): EPISODES episodes of every MT30 task whose returns grow with `quality` and
    the step, with noise mostly fixed by the env seed (so trials of one seed pair) and partly
    the agent's own."""
    from tdmpc_ray.evaluate.rollout import EpisodeResult, EpisodeSpec
    from tdmpc_ray.evaluate.score import _scores

    specs = [EpisodeSpec(seed, task, k, e) for k, task in enumerate(MT30) for e in range(EPISODES)]
    results = [
        EpisodeResult(
            s,
            ret=min(
                1000.0,
                (100 + 30 * (s.task_id % 7)) * quality * step / 4000
                + s.env_seed % 101
                + (s.env_seed + round(quality * 97)) % 23,
            ),
            length=500,
        )
        for s in specs
    ]
    return _scores(results, MT30, specs)


def write_run(out: Path, run_dir: str, config: dict) -> None:
    """The run.json the sweep runner writes: the effective config (no teacher without
    distillation) and the recipe."""
    from tdmpc_ray.atomic import write_json

    distilling = config.get("d_coef", 0) > 0 or config.get("recipe", "scratch") != "scratch"
    run = {**config, "teacher": config.get("teacher") if distilling else None}
    write_json(
        out / run_dir / "run.json",
        {"config": run, "recipe": "distill" if distilling else "scratch"},
    )


def report_row(out: Path, run_dir: str, config: dict, i: int, quality: float) -> dict:
    """Report number `i` as the sweep runner sends it to Tune: training metrics and `run_dir`
    always; every second one also a finished evaluation (its file written like
    `evaluate_checkpoint`'s, its metrics like `training_metrics`)."""
    from tdmpc_ray.atomic import write_json
    from tdmpc_ray.evaluate.report import training_metrics

    row = {"step": 1000 * i, "total_loss": 2.0 / i, "updates_per_s": 40.0 + i, "run_dir": run_dir}
    if i % 2 == 0:
        step = 1000 * i
        result = evaluation(config["seed"], quality, step)
        file = f"{run_dir}/evals/step_{step:09d}.json"
        write_json(out / file, {"step": step, **result})
        row.update(training_metrics(result), eval_step=step, eval_file=file)
    return row


def make_trainable(gate: Path | None = None) -> Callable[[dict], None]:
    """A Tune function trainable reporting like the sweep runner (`report_row`), with quality
    1 + d_coef. It fails after its third report when d_coef is FAILING_D_COEF, and with `gate`
    it waits after its second report until that file exists."""

    def trainable(config: dict) -> None:
        from ray import tune

        run_dir = f"{tune.get_context().get_trial_name()}/train"
        out = Path(config["out"])
        write_run(out, run_dir, config)
        for i in range(1, REPORTS + 1):
            tune.report(report_row(out, run_dir, config, i, 1 + config["d_coef"]))
            while gate is not None and i == 2 and not gate.exists():
                time.sleep(0.05)
            if config["d_coef"] == FAILING_D_COEF and i == 3:
                raise RuntimeError("injected failure")

    return trainable


def run_sweep(
    storage: Path,
    name: str,
    d_coefs: list[float],
    gate: Path | None = None,
    concurrent: int | None = 2,
) -> Path:
    """Run a real Ray Tune grid over d_coef into `storage/name` and return that folder (one CPU
    per trial, at most `concurrent` trials at once)."""
    from ray import tune

    tuner = tune.Tuner(
        make_trainable(gate),
        param_space={
            "d_coef": tune.grid_search(d_coefs),
            "teacher": "teacher.pt",
            "batch_size": 256,
            "steps": 1000 * REPORTS,
            "seed": 1,
            "model_size": 1,
            "out": str(storage / name),
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    tuner.fit()
    return storage / name


@pytest.fixture(scope="module")
def sweep(ray_session: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished four-trial sweep, one of whose trials errored."""
    return run_sweep(tmp_path_factory.mktemp("ray_results"), "distill_sweep", D_COEFS)


def by_d_coef(payload: dict) -> dict[float, dict]:
    return {t["params"]["d_coef"]: t for t in payload["trials"]}


def copy_trial(sweep: Path, d_coef: float, dest: Path) -> Path:
    """Copy the folder of one trial of `sweep` (no experiment state) into `dest`."""
    trial = by_d_coef(ResultsReader(sweep).read())[d_coef]
    return Path(shutil.copytree(sweep / trial["dir"], dest / trial["dir"]))


def recipe_sweep(root: Path) -> Path:
    """An experiment folder written as the sweep runner and Tune write it (params.json,
    result.json, run.json, evaluation files), without running Tune: recipes scratch and
    reward, seeds 1 and 2, and batch size 256 except one trial."""
    grid = [("scratch", 1, 256), ("scratch", 2, 256), ("reward", 1, 256), ("reward", 2, 512)]
    for n, (recipe, seed, batch) in enumerate(grid):
        config = {
            "recipe": recipe,
            "seed": seed,
            "batch_size": batch,
            "teacher": "t.pt",
            "out": str(root),
        }
        folder = root / f"run_trial_{n:05d}_{recipe}_{seed}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps(config))
        run_dir = f"run_trial_{n:05d}/train"
        write_run(root, run_dir, config)
        quality = 1.5 if recipe == "reward" else 1.0
        rows = [report_row(root, run_dir, config, i, quality) for i in range(1, REPORTS + 1)]
        rows[-1]["done"] = True
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_scores_appear_only_where_an_evaluation_ran() -> None:
    rows = [
        {"step": 100, "total_loss": 1.0},
        {"step": 200, "normalized_score": 0.0},  # a placeholder, not an evaluation
        {
            "step": 300,
            "normalized_score": 12.0,
            "normalized_score_low": 10.0,
            "normalized_score_high": 14.0,
            "eval_step": 200,
            "eval_episodes": 2,
            "score/a": 12.0,
        },
        {"step": 400, "normalized_score": 12.0, "eval_step": 200},  # the same evaluation again
        {"step": 500, "normalized_score": 20.0, "eval_step": 500},
        {"step": 600, "eval_error": "step 600: boom"},
    ]
    summary = summarize_rows(rows)
    assert summary["curve"] == [[200, 12.0, 10.0, 14.0], [500, 20.0, None, None]]
    assert summary["latest_score"] == 20.0 and summary["latest_low"] is None
    assert summary["best_score"] == 20.0 and summary["step"] == 600 and summary["eval_step"] == 500
    assert summary["eval_error"] == "step 600: boom"
    assert (
        summarize_rows(rows[:2])["curve"] == [] and summarize_rows(rows[:2])["latest_score"] is None
    )


def test_shared_config_holds_only_keys_equal_in_every_trial() -> None:
    configs = [{"a": 1, "b": 2, "t": "x"}, {"a": 1, "b": 3, "t": None}, {"a": 1, "b": 3}]
    assert split_config(configs) == (["b", "t"], {"a": 1})
    run = {"config": {"teacher": None, "out": "/x/trial", "d_coef": 0.0, "lr": 3e-4}}
    params = {"teacher": "t.pt", "out": "/x", "d_coef": 0.0}
    assert effective_config(params, run) == {"teacher": None, "out": "/x", "d_coef": 0.0}
    assert effective_config(params, None) == params


def test_payload_of_a_recipe_sweep(tmp_path: Path) -> None:
    payload = ResultsReader(recipe_sweep(tmp_path)).read()
    assert payload["message"] is None and len(payload["trials"]) == 4
    assert payload["swept"] == ["batch_size", "recipe", "seed"]
    assert "teacher" in payload["varying"] and "teacher" not in payload["shared"]
    assert "out" not in payload["varying"] and payload["shared"]["out"] == str(tmp_path)
    trials = {(t["params"]["recipe"], t["params"]["seed"]): t for t in payload["trials"]}
    assert sorted(payload["scratch"]) == sorted(
        t["id"] for k, t in trials.items() if k[0] == "scratch"
    )
    reward = trials[("reward", 1)]
    assert (
        reward["config"]["teacher"] == "t.pt"
        and trials[("scratch", 1)]["config"]["teacher"] is None
    )
    assert [p[0] for p in reward["curve"]] == [2000, 4000]
    assert reward["latest_low"] < reward["latest_score"] < reward["latest_high"]
    assert reward["eval_episodes"] == EPISODES and set(reward["task_intervals"]) == set(MT30)
    low, high = reward["task_intervals"]["walker-walk"]
    assert low <= reward["tasks"]["walker-walk"] <= high
    versus = reward["vs_scratch"]
    assert versus["scratch"] == [trials[("scratch", 1)]["id"]] and versus["steps"] == [4000]
    assert 0 < versus["difference"]["low"] <= versus["difference"]["high"]
    assert versus["verdict"] == "trial scores higher"
    assert trials[("reward", 2)]["vs_scratch"] is None  # batch 512 has no scratch partner
    assert trials[("scratch", 1)]["vs_scratch"] is None
    assert payload["best"] == reward["id"]


@pytest.mark.slow
def test_reader_on_finished_sweep(sweep: Path) -> None:
    payload = ResultsReader(sweep).read()
    trials = by_d_coef(payload)
    assert payload["message"] is None and sorted(trials) == D_COEFS
    assert {d: t["status"] for d, t in trials.items()} == {
        0.0: "TERMINATED",
        0.2: "ERROR",
        0.4: "TERMINATED",
        0.45: "TERMINATED",
    }
    assert "injected failure" in trials[FAILING_D_COEF]["error"]
    assert [p[0] for p in trials[0.4]["curve"]] == [2000, 4000]
    assert trials[FAILING_D_COEF]["step"] == 3000 and len(trials[FAILING_D_COEF]["curve"]) == 1
    best = trials[0.45]
    assert payload["best"] == best["id"] and best["best_score"] == best["latest_score"]
    assert best["eval_step"] == 4000 and best["updates_per_s"] == 44.0
    assert best["latest_low"] < best["latest_score"] < best["latest_high"]
    assert set(best["tasks"]) == set(MT30) == set(best["task_intervals"])
    assert payload["swept"] == ["d_coef"] and payload["varying"] == ["d_coef", "teacher"]
    assert payload["shared"]["batch_size"] == 256 and "teacher" not in payload["shared"]
    assert payload["scratch"] == [trials[0.0]["id"]] and trials[0.0]["config"]["teacher"] is None
    assert trials[0.45]["vs_scratch"]["steps"] == [4000]
    assert trials[FAILING_D_COEF]["vs_scratch"]["steps"] == [2000]
    assert trials[0.45]["vs_scratch"]["difference"]["low"] > 0


@pytest.mark.slow
def test_status_inferred_without_experiment_state(sweep: Path, tmp_path: Path) -> None:
    for d_coef in (0.4, FAILING_D_COEF):
        copy_trial(sweep, d_coef, tmp_path)
    statuses = {d: t["status"] for d, t in by_d_coef(ResultsReader(tmp_path).read()).items()}
    assert statuses == {0.4: "RUNNING", FAILING_D_COEF: "ERROR"}


@pytest.mark.slow
def test_reader_tolerates_files_caught_mid_copy(sweep: Path, tmp_path: Path) -> None:
    trial_dir = copy_trial(sweep, 0.4, tmp_path)
    result = trial_dir / "result.json"
    lines = result.read_text().splitlines(keepends=True)
    (trial_dir / "params.json").write_text('{"d_coef": 0.4, "batch')
    result.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    reader = ResultsReader(tmp_path)
    (trial,) = reader.read()["trials"]
    assert trial["step"] == 3000 and trial["latest_score"] is not None
    assert trial["config"]["d_coef"] == 0.4 and trial["config"]["batch_size"] == 256

    result.write_text("".join(lines))
    assert reader.read()["trials"][0]["step"] == 4000
    result.write_text(lines[0][:10])
    assert reader.read()["trials"][0]["step"] == 4000


@pytest.mark.slow
def test_missing_empty_and_parent_folders_explain_themselves(sweep: Path, tmp_path: Path) -> None:
    missing = ResultsReader(tmp_path / "nope").read()
    assert missing["trials"] == [] and "No results folder" in missing["message"]
    assert "No trials" in ResultsReader(tmp_path).read()["message"]
    assert sweep.name in ResultsReader(sweep.parent).read()["message"]
    (tmp_path / "file").write_text("x")
    assert "is a file" in ResultsReader(tmp_path / "file").read()["message"]


@pytest.mark.slow
def test_reader_follows_a_running_sweep(
    ray_session: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    gate = tmp_path / "gate"
    live = [0.0, 0.4, 0.45]  # two run on the session's two CPUs, the third waits
    runner = threading.Thread(target=run_sweep, args=(tmp_path, "live", live, gate, None))
    runner.start()
    reader = ResultsReader(tmp_path / "live")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = [(t["status"], t["step"], t["dir"] is None) for t in reader.read()["trials"]]
            if len(rows) == len(live) and rows[0][1] == rows[1][1] == 2000:
                break
            time.sleep(0.2)
        assert rows == [("RUNNING", 2000, False)] * 2 + [("PENDING", None, True)]
    finally:
        gate.touch()
        runner.join(timeout=60)
    trials = reader.read()["trials"]
    assert [(t["status"], t["step"]) for t in trials] == [("TERMINATED", 4000)] * len(live)


@pytest.mark.slow
def test_export_is_self_contained(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report.html"
    assert main(["dashboard", str(sweep), "--export", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    html = out.read_text()
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= {SVG_NAMESPACE}
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "window.DASHBOARD_DATA" in html and "injected failure" in html
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]

    assert main(["dashboard", str(tmp_path / "nope"), "--export", str(out)]) == 2
    assert "no such results folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="No trials"):
        export_html(tmp_path, tmp_path / "empty.html")


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with make_server(tmp_path, port=0) as server:
        with pytest.raises(ValueError, match="in use"):
            make_server(tmp_path, port=server.server_address[1])


def test_server_answers_only_requests_addressed_to_localhost(tmp_path: Path) -> None:
    with make_server(tmp_path, port=0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            statuses = {}
            for host in ("127.0.0.1", "localhost", "attacker.example"):
                conn = http.client.HTTPConnection(*server.server_address, timeout=10)
                conn.request("GET", "/api/results", headers={"Host": f"{host}:8050"})
                statuses[host] = conn.getresponse().status
                conn.close()
        finally:
            server.shutdown()
    assert statuses == {"127.0.0.1": 200, "localhost": 200, "attacker.example": 403}


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """`serve(folder)` starts a dashboard on a free localhost port and returns its URL."""
    servers: list[DashboardServer] = []

    def start(folder: Path) -> str:
        server = make_server(folder, port=0, refresh_s=0.5)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: object, url: str) -> tuple[object, list[str]]:
    """A new page at `url` and the list that collects its console errors and uncaught ones."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, errors


@pytest.mark.slow
def test_page_in_headless_chromium(
    browser: object, serve: Callable[[Path], str], sweep: Path, tmp_path: Path
) -> None:
    polls = []
    page, errors = open_page(browser, "about:blank")
    page.on("request", lambda req: polls.append(req.url) if "/api/results" in req.url else None)
    page.goto(serve(sweep))
    rows = page.locator("#trials tbody tr")
    rows.nth(len(D_COEFS) - 1).wait_for()
    assert rows.count() == len(D_COEFS)
    assert page.locator("#key-panels figure").count() == 1
    assert page.locator("#plot-key-d_coef circle").count() == len(D_COEFS)
    assert page.locator("#plot-key-d_coef g.errorbar").count() == len(D_COEFS)
    assert page.locator("#plot-key-d_coef polyline").count() == 1
    assert page.locator("#plot-steps polyline").count() == len(D_COEFS) - 1
    assert page.locator("#plot-steps g.errorbar").count() == 2 * len(D_COEFS) - 1
    assert page.locator("#plot-scratch circle").count() == len(D_COEFS) - 1
    assert page.locator("#plot-scratch g.errorbar").count() == len(D_COEFS) - 1
    assert page.locator("#plot-tasks rect.bar").count() == len(MT30)
    assert page.locator("#plot-tasks g.errorbar").count() == len(MT30)
    best = page.locator("#best").inner_text()
    assert "0.45" in best and "trial scores higher" in best
    assert "ERROR" in rows.nth(1).inner_text() and "(scratch)" in rows.first.inner_text()
    shared = page.locator("#shared").inner_text()
    assert "batch_size=256" in shared and "teacher" not in shared

    first = rows.first
    first.click()
    assert "selected" in first.get_attribute("class")
    assert "d_coef=0)" in page.locator("#tasks-caption").inner_text()
    rows.last.click()
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    page.wait_for_timeout(1200)
    assert len(polls) >= 2 and rows.count() == len(D_COEFS)
    assert errors == []


def test_exported_recipe_sweep_has_a_score_panel_per_swept_key(
    browser: object, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    export_html(recipe_sweep(tmp_path / "sweep"), out)
    page, errors = open_page(browser, out.as_uri())
    panels = page.locator("#key-panels figure")
    assert [panels.nth(i).get_attribute("data-key") for i in range(panels.count())] == [
        "batch_size",
        "recipe",
        "seed",
    ]
    categories = page.locator("#plot-key-recipe text.category").all_text_contents()
    assert categories == ["reward", "scratch"]
    assert page.locator("#plot-key-recipe g.errorbar").count() == 4
    assert page.locator("#plot-scratch g.errorbar").count() == 1
    assert errors == []


def test_page_explains_a_missing_folder(
    browser: object, serve: Callable[[Path], str], tmp_path: Path
) -> None:
    page, errors = open_page(browser, serve(tmp_path / "not_yet"))
    message = page.locator("#message")
    message.wait_for()
    assert "No results folder" in message.inner_text()
    assert page.locator("#content").is_hidden() and errors == []


@pytest.mark.slow
def test_exported_page_renders_offline(browser: object, sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    export_html(sweep, out)
    page, errors = open_page(browser, out.as_uri())
    assert page.locator("#trials tbody tr").count() == len(D_COEFS)
    assert page.locator("#plot-steps polyline").count() == len(D_COEFS) - 1
    assert "Static snapshot" in page.locator("#freshness").inner_text() and errors == []
    assert page.evaluate("window.DASHBOARD_DATA.best")


# --- Hostile results folders (issue 27): every case fails on the reader before the fix (it read
# outside the folder, hung on the FIFO, or raised), while the other trials must still render.

BAD = 2
"""The trial the hostile cases spoil: recipe reward, seed 1 (it pairs with scratch seed 1)."""
SECRET = "TOP-SECRET line of a file outside the results folder"


def spoil_rows(folder: Path, eval_file: str) -> None:
    """Point every evaluation row of a trial's result.json at `eval_file`."""
    rows = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    for row in rows:
        if "eval_file" in row:
            row["eval_file"] = eval_file
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def last_eval(root: Path) -> Path:
    """The bad trial's last per-step evaluation file (replaced by the cases below)."""
    path = root / f"run_trial_{BAD:05d}" / "train" / "evals" / f"step_{1000 * REPORTS:09d}.json"
    path.unlink()
    return path


def spoil(case: str, root: Path, outside: Path) -> None:
    """Make trial BAD of the recipe sweep in `root` hostile in the way `case` names; `outside`
    is a folder beside it holding a secret and a valid evaluation file."""
    folder = next(root.glob(f"run_trial_{BAD:05d}_*"))
    if case == "symlinked error.txt":
        (folder / "error.txt").symlink_to(outside / "secret.txt")
    elif case == "symlinked eval file":
        last_eval(root).symlink_to(outside / "eval.json")
    elif case == "absolute eval_file":
        spoil_rows(folder, str(outside / "eval.json"))
    elif case == "/dev/zero as eval_file":
        spoil_rows(folder, "/dev/zero")
    elif case == "eval file linked to /dev/zero":
        last_eval(root).symlink_to("/dev/zero")
    elif case == "FIFO eval file":
        os.mkfifo(last_eval(root))
    elif case == "oversized eval file":
        with open(last_eval(root), "wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    elif case == "NUL byte in eval_file":
        spoil_rows(folder, f"run_trial_{BAD:05d}/train/evals/step\x00.json")
    elif case == "NUL bytes in an eval file":
        last_eval(root).write_bytes(b'{"tasks": {"walker-walk": \x00\x00}}')
    elif case == "no tasks in an eval file":
        last_eval(root).write_text('{"tasks": [], "normalized_score": 99.0}')


HOSTILE = {
    "symlinked error.txt": "leads outside the results folder",
    "symlinked eval file": "leads outside the results folder",
    "absolute eval_file": "an absolute path",
    "/dev/zero as eval_file": "an absolute path",
    "eval file linked to /dev/zero": "leads outside the results folder",
    "FIFO eval file": "not a regular file",
    "oversized eval file": "larger than",
    "NUL byte in eval_file": "a NUL byte",
    "NUL bytes in an eval file": "not an evaluation result",
    "no tasks in an eval file": "not an evaluation result",
}


def read_within(root: Path, seconds: float = 30) -> dict:
    """The reader's payload for `root`, which must come within `seconds` (a FIFO once blocked
    the reader, and the server with it, forever)."""
    payload: dict = {}
    reader = threading.Thread(
        target=lambda: payload.update(ResultsReader(root).read()), daemon=True
    )
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"reading {root} hangs"
    return payload


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_trial_shows_its_error_and_the_others_render(case: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"Traceback\n{SECRET}\n")
    (outside / "eval.json").write_text(json.dumps(evaluation(1, 50.0, 4000)))
    root = recipe_sweep(tmp_path / "sweep")
    spoil(case, root, outside)
    payload = read_within(root)
    trials = {t["dir"]: t for t in payload["trials"]}
    bad = trials.pop(next(d for d in trials if d.startswith(f"run_trial_{BAD:05d}")))
    assert HOSTILE[case] in bad["error"] and "\n" not in bad["error"]
    assert bad["latest_score"] is None and bad["curve"] == []
    assert len(trials) == 3 and all(t["latest_score"] is not None for t in trials.values())
    assert all(t["error"] is None for t in trials.values())
    assert SECRET not in json.dumps(payload)
    assert len(export_html(root, tmp_path / "report.html")["trials"]) == 4


def test_a_symlinked_trial_folder_is_not_read(tmp_path: Path) -> None:
    root = recipe_sweep(tmp_path / "sweep")
    elsewhere = recipe_sweep(tmp_path / "elsewhere")
    (root / "zz_link").symlink_to(next(elsewhere.glob("run_trial_00000_*")))
    payload = ResultsReader(root).read()
    assert len(payload["trials"]) == 4 and "zz_link" not in json.dumps(payload)


def test_evaluations_found_only_as_step_files_are_shown(tmp_path: Path) -> None:
    """The quickstart writes its final scores as per-step files that no Tune row names."""
    root = recipe_sweep(tmp_path / "sweep")
    for folder in root.glob("run_trial_*_*"):
        rows = (folder / "result.json").read_text().splitlines()
        (folder / "result.json").write_text(
            "".join(
                json.dumps(
                    {k: v for k, v in json.loads(r).items() if k not in ("eval_file", "eval_step")}
                )
                + "\n"
                for r in rows
            )
        )
    trials = {
        (t["params"]["recipe"], t["params"]["seed"]): t
        for t in ResultsReader(root).read()["trials"]
    }
    reward = trials[("reward", 1)]
    assert [p[0] for p in reward["curve"]] == [2000, 4000]
    assert reward["latest_low"] < reward["latest_score"] < reward["latest_high"]
    assert reward["eval_episodes"] == EPISODES and set(reward["tasks"]) == set(MT30)
    assert reward["vs_scratch"]["steps"] == [4000]
    assert reward["vs_scratch"]["verdict"] == "trial scores higher"
    assert [p[0] for p in reward["losses"]["total_loss"]] == [1000 * i for i in range(1, 5)]


def test_export_names_no_path_or_host_and_prints_ids_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = recipe_sweep(tmp_path / "sweep")
    folder = next(root.glob(f"run_trial_{BAD:05d}_*"))
    rows = (folder / "result.json").read_text().splitlines()
    evil = "evil\x1b]0;pwned\x07\x1b[31m"
    rows = [json.dumps({**json.loads(r), "trial_id": evil}) for r in rows]
    (folder / "result.json").write_text("\n".join(rows) + "\n")
    (folder / "error.txt").write_text(f"RuntimeError: {root}/x failed on {socket.gethostname()}")
    out = tmp_path / "report.html"
    assert main(["dashboard", str(root), "--export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and "evil\\x1b]0;pwned" in printed
    html = out.read_text()
    assert str(tmp_path) not in html
    assert not re.search(rf"(?<![\w.-]){re.escape(socket.gethostname())}(?![\w-])", html)
    data = json.loads(re.search(r"window\.DASHBOARD_DATA = (.*);</script>", html).group(1))
    assert data["root"] == "sweep" and data["shared"]["out"] == "sweep"  # from the folder's parent
    assert "<host>" in next(t["error"] for t in data["trials"] if t["error"])


def test_every_response_carries_nosniff_and_a_csp(tmp_path: Path) -> None:
    with make_server(tmp_path, port=0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            cases = [
                ("/", "localhost", 200),
                ("/api/results", "localhost", 200),
                ("/static/app.js", "localhost", 200),
                ("/nope", "localhost", 404),
                ("/", "evil.example", 403),
            ]
            for path, host, status in cases:
                conn = http.client.HTTPConnection(*server.server_address, timeout=10)
                conn.request("GET", path, headers={"Host": host})
                response = conn.getresponse()
                response.read()
                conn.close()
                assert response.status == status, path
                assert response.getheader("X-Content-Type-Options") == "nosniff", path
                csp = response.getheader("Content-Security-Policy")
                assert "default-src 'none'" in csp and "script-src 'self'" in csp, path
        finally:
            server.shutdown()


def test_agents_scored_beside_the_sweep_are_shown_as_references(tmp_path: Path) -> None:
    root = recipe_sweep(tmp_path / "sweep")
    (tmp_path / "outside.json").write_text(json.dumps(evaluation(1, 50.0, 4000)))
    (root / "evals").mkdir()
    (root / "evals" / "teacher.json").write_text(json.dumps(evaluation(1, 2.0, 4000)))
    (root / "evals" / "broken.json").write_text('{"tasks": []}')
    (root / "evals" / "linked.json").symlink_to(tmp_path / "outside.json")
    payload = ResultsReader(root).read()
    references = {r["name"]: r for r in payload["references"]}
    assert sorted(references) == ["broken", "linked", "teacher"] and len(payload["trials"]) == 4
    teacher = references["teacher"]
    assert teacher["low"] < teacher["score"] < teacher["high"] and teacher["episodes"] == EPISODES
    assert "not an evaluation result" in references["broken"]["error"]
    assert "leads outside" in references["linked"]["error"] and "score" not in references["linked"]
