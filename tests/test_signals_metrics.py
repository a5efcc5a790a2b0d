"""Metrics: scraped from a running 'statekit serve' over HTTP and parsed by prometheus_client (issue 17)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from statekit.store import Store

parser = pytest.importorskip("prometheus_client.parser")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(store: Store) -> None:
    store.create("sh", "e1")
    store.create("sh", "e2")
    store.create("other", "e1")
    with store.run("sh", "e1", "downloading") as run:
        run.checkpoint({"part": 1}, cost=0.25)
    with pytest.raises(ConnectionError), store.run("sh", "e2", "downloading"):
        raise ConnectionError("down")
    store.advance("other", "e1", "downloading")
    store.verify()


def scrape(port: int, deadline: float = 30.0) -> str:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                return r.read().decode()
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path):
    store = Store.init(tmp_path / "s", "archive")
    fill(store)
    store.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "serve", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield store, port
    finally:
        proc.terminate()
        proc.wait(30)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def test_scrape_a_running_server(served: tuple[Store, int]) -> None:
    store, port = served
    got = samples(scrape(port))
    assert got[("statekit_episodes", (("show", "sh"), ("stage", "downloaded")))] == 1
    assert got[("statekit_episodes", (("show", "sh"), ("stage", "failed")))] == 1
    assert got[("statekit_cost_total", (("show", "sh"), ("stage", "downloading")))] == 0.25
    assert got[("statekit_runs_total", (("outcome", "succeeded"), ("stage", "downloading")))] == 1
    assert got[("statekit_runs_total", (("outcome", "failed"), ("stage", "downloading")))] == 1
    assert got[("statekit_failures_total", (("kind", "transient_network"), ("stage", "downloading")))] == 1
    assert got[("statekit_leases", (("state", "live"),))] == 0
    assert got[("statekit_index_drift", ())] == 0
    assert ("statekit_oldest_waiting_seconds", (("stage", "downloading"),)) in got
    assert any(name == "statekit_build_info" for name, _ in got)
    # values come from the index at scrape time: a write by another process shows at once
    other = Store.open(store.root)
    other.create("sh", "e3")
    other.close()
    assert samples(scrape(port))[("statekit_episodes", (("show", "sh"), ("stage", "discovered")))] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.read() == b"ok\n"


def test_metrics_command_prints_the_same_names(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "s", "archive")
    fill(store)
    store.close()
    result = subprocess.run([sys.executable, "-m", "statekit.cli", "--root", str(store.root), "metrics"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    names = {name for name, _ in samples(result.stdout)}
    assert {"statekit_episodes", "statekit_cost_total", "statekit_runs_total", "statekit_failures_total",
            "statekit_leases", "statekit_index_drift", "statekit_build_info"} <= names


def test_grafana_dashboard_loads_the_served_metric_names(served: tuple[Store, int]) -> None:
    from statekit.signals.metrics import NAMES

    _, port = served
    served_names = {name for name, _ in samples(scrape(port))}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    used = {m for e in exprs for m in re.findall(r"\bstatekit_[a-z_]+", e)}
    assert used and used <= served_names, used - served_names
    assert served_names <= set(NAMES)  # the exporter's documented names
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("stage", "failures by kind", "cost", "throughput"):
        assert wanted in titles
