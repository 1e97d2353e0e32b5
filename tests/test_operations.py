"""What operators see: metrics, request logs with masked numbers, clean shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pns.client import PnsClient
from pns.logs import mask_number
from pns.model import Role

from .conftest import create_tenant, free_port, pns_command, unique_hk


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def test_mask_number() -> None:
    assert mask_number("caller 85211111114 did 85235753351") == \
        "caller 8521*****14 did 8523*****51"
    assert mask_number("code 10013") == "code 10013"
    assert mask_number("requestId=2125974078581899264") == "requestId=2125974078581899264"


def test_metrics_and_json_request_log(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/ops.db"
    customer = create_tenant(url, Role.CUSTOMER, numbers=1)
    switch = create_tenant(url, Role.SWITCH)
    port = free_port()
    proc = subprocess.Popen(
        pns_command("serve", "--port", str(port), "--store", url, "--log-format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PNS_POOL_METRICS_INTERVAL": "0.2"})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if _get(base + "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        c = PnsClient(base, customer.access_key, customer.access_secret)
        a, b = unique_hk("1"), unique_hk("2")
        did = c.bind_axb(a, b, 0)["data"]["did"]
        s = PnsClient(base, switch.access_key, switch.access_secret)
        assert s.query(a, did)["code"] == 0
        assert s.query(unique_hk("9"), did)["code"] == 10013
        status, text = _get(base + "/metrics")
        assert status == 200
        assert 'pns_requests_total{action="queryAXB",code="0"} 1.0' in text
        assert 'pns_requests_total{action="queryAXB",code="10013"} 1.0' in text
        assert 'pns_requests_total{action="bindAXB",code="0"} 1.0' in text
        assert 'pns_request_seconds_count{action="queryAXB"} 2.0' in text
        # A second pair with the same A on the only number: refused, and counted by reason.
        assert c.bind_axb(a, unique_hk("2"), 0)["code"] == 10010
        time.sleep(0.5)
        text = _get(base + "/metrics")[1]
        assert ('pns_allocation_failures_total{reason="parties_bound_on_every_number"} 1.0'
                in text)
        key = customer.access_key
        assert f'pns_pool_numbers{{account="{key}",country="852"}} 1.0' in text
        assert f'pns_pool_active_bindings{{account="{key}",country="852"}} 1.0' in text
        assert f'pns_pool_headroom_busiest_party{{account="{key}",country="852"}} 0.0' in text
        assert re.search(r"^process_resident_memory_bytes [1-9]", text, re.M)
        assert "process_cpu_seconds_total" in text and "process_open_fds" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    requests = [entry for entry in lines if entry["logger"] == "pns.access"]
    assert len(requests) == 4
    assert all(re.search(r"requestId=\d{19} ", e["msg"]) and "ms=" in e["msg"] for e in requests)
    assert any("code=10013" in e["msg"] for e in requests)
    assert a not in err and b not in err and did not in err
    assert customer.access_secret not in err and switch.access_secret not in err
    assert any(e["msg"] == "stopped" for e in lines)


def test_sigterm_finishes_in_flight_request(tmp_path: object) -> None:
    """A bind waiting on the store when SIGTERM arrives still gets its answer."""
    import sqlite3
    import threading

    from .conftest import Server

    url = f"sqlite:///{tmp_path}/term.db"
    customer = create_tenant(url, Role.CUSTOMER, numbers=1)
    server = Server(url)
    blocker = sqlite3.connect(f"{tmp_path}/term.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the server's bind now waits for this lock
    answers: list[dict[str, object]] = []
    client = PnsClient(server.url, customer.access_key, customer.access_secret)
    worker = threading.Thread(
        target=lambda: answers.append(client.bind_axb(unique_hk("1"), unique_hk("2"), 0)))
    worker.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.proc.poll() is None, "must not exit with a request in flight"
    blocker.execute("COMMIT")
    worker.join(15)
    assert answers and answers[0]["code"] == 0
    assert server.proc.wait(15) == 0


def test_config_example_names_real_options() -> None:
    import tomllib
    from pathlib import Path

    from pns.cli import serve

    example = Path(__file__).resolve().parent.parent / "deploy" / "pns.toml.example"
    config = tomllib.loads(example.read_text())
    names = {p.name for p in serve.params}
    assert {k.replace("-", "_") for k in config["serve"]} <= names


def test_the_shipped_config_and_unit_start_a_server(tmp_path: Path) -> None:
    """deploy/systemd/pns.service's command with deploy/pns.toml.example, as docs/deploy.md
    installs them (only the store's path and the port moved here): the server comes up. A
    setting the example ships that serve refuses (``workers`` on SQLite did) fails here."""
    import shlex

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    port = free_port()
    config = (deploy / "pns.toml.example").read_text()
    assert 'store = "sqlite:////var/lib/pns/pns.db"' in config and "port = 8080" in config
    config = config.replace("/var/lib/pns/pns.db", str(tmp_path / "pns.db")).replace(
        "port = 8080", f"port = {port}")
    (tmp_path / "pns.toml").write_text(config)
    unit = (deploy / "systemd" / "pns.service").read_text()
    (exec_start,) = [line.split("=", 1)[1] for line in unit.splitlines()
                     if line.startswith("ExecStart=")]
    program, *args = shlex.split(exec_start)
    assert program == "/opt/pns/.venv/bin/pns"
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(pns_command(*args), stdout=subprocess.DEVNULL, stderr=sink,
                                env={**os.environ, "PNS_CONFIG": str(tmp_path / "pns.toml")})
    try:
        for _ in range(300):
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=1) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError(f"not healthy: {log.read_text()}")
    finally:
        proc.terminate()
        proc.wait(10)


def test_metrics_add_up_across_two_workers(pg_database: str, tmp_path: Path) -> None:
    """With --workers 2 every scrape, whichever worker answers, counts all 200 binds once;
    a previous run's files in the metrics directory are emptied on start."""
    from .conftest import Server

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c",
                    "from prometheus_client import Counter\n"
                    "Counter('pns_requests', 'x', ['action', 'code'])"
                    ".labels('bindAXB', '0').inc(999)"], env=env, check=True)
    assert list(metrics_dir.glob("counter_*.db")), "a stale file from an earlier run"
    customer = create_tenant(pg_database, Role.CUSTOMER, numbers=2)
    server = Server(pg_database, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR":
                                                          str(metrics_dir)})
    try:
        for _ in range(200):
            client = server.client(customer)  # a new connection each: both workers answer
            assert client.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 0
            client.close()
        writers = list(metrics_dir.glob("counter_*.db"))
        assert len(writers) == 2, f"both workers served binds: {writers}"
        for _ in range(6):
            text = _get(server.url + "/metrics")[1]
            assert 'pns_requests_total{action="bindAXB",code="0"} 200.0' in text
            assert 'pns_request_seconds_count{action="bindAXB"} 200.0' in text
            assert re.search(r"^process_resident_memory_bytes [1-9]", text, re.M)
            assert re.search(r"^process_start_time_seconds [1-9]", text, re.M)
    finally:
        server.stop()


REPO = Path(__file__).resolve().parent.parent


def test_deploy_doc_names_the_modules_loaded() -> None:
    """docs/deploy.md lists exactly the modules the Kamailio config loads, creates the users
    with a real command, and gives every kamailio command a run directory (-Y)."""
    config = (REPO / "deploy" / "kamailio" / "kamailio.cfg").read_text()
    loaded = set(re.findall(r'^loadmodule "(\w+)\.so"', config, re.M))
    doc = (REPO / "docs" / "deploy.md").read_text()
    listed_at = doc.index("<!-- modules:")
    paragraph = doc[doc.index("-->", listed_at):].split("\n\n", 1)[0]
    assert set(re.findall(r"`(\w+)`", paragraph)) == loaded
    assert "crypto" not in loaded or "crypto" in paragraph
    assert "useradd --system --user-group" in doc
    unit = (REPO / "deploy" / "systemd" / "kamailio-pns.service").read_text()
    commands = re.findall(r"kamailio -DD[^\n]*", doc + unit)
    assert len(commands) >= 2
    assert all(" -Y " in line for line in commands), commands


def _documented_python_backup() -> str:
    doc = (REPO / "docs" / "backup.md").read_text()
    return doc.split("python3 -c '\n", 1)[1].split("\n'", 1)[0]


def test_sqlite_backup_while_binding(tmp_path: Path) -> None:
    """Both documented online backups, taken while binds commit, open, pass integrity_check
    and serve."""
    import shutil
    import sqlite3
    import threading

    from .conftest import Server

    assert shutil.which("sqlite3"), "the sqlite3 command (Debian package sqlite3) is needed"
    url = f"sqlite:///{tmp_path}/live.db"
    customer = create_tenant(url, Role.CUSTOMER, numbers=5)
    server = Server(url)
    stop = threading.Event()
    bound: list[str] = []

    def bind_until_stopped() -> None:
        client = server.client(customer)
        while not stop.is_set():
            answer = client.bind_axb(unique_hk("1"), unique_hk("2"), 0)
            assert answer["code"] == 0, answer
            bound.append(answer["data"]["bindId"])

    writer = threading.Thread(target=bind_until_stopped)
    writer.start()
    try:
        while len(bound) < 20:
            time.sleep(0.05)
        cli_copy, python_copy = tmp_path / "cli-backup.db", tmp_path / "py-backup.db"
        subprocess.run(["sqlite3", str(tmp_path / "live.db"), f".backup '{cli_copy}'"],
                       check=True, timeout=60)
        printed = subprocess.run([sys.executable, "-c", _documented_python_backup(),
                                  str(tmp_path / "live.db"), str(python_copy)],
                                 capture_output=True, text=True, check=True, timeout=60)
        assert printed.stdout.strip() == "ok"
        during = len(bound)
        while len(bound) < during + 20:  # binds went on after the backups
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(30)
        server.stop()
    for copy in (cli_copy, python_copy):
        # The documented backup is the store and its key: the key file beside it, unless
        # the key comes from PNS_SECRET_KEY (as in this suite), which the restore reads too.
        key = tmp_path / "live.db.key"
        if not os.environ.get("PNS_SECRET_KEY"):
            shutil.copy(key, f"{copy}.key")
        conn = sqlite3.connect(copy)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (count,) = conn.execute("SELECT count(*) FROM bindings").fetchone()
        conn.close()
        assert 20 <= count <= len(bound)
        restored = Server(f"sqlite:///{copy}")
        try:
            client = restored.client(customer)
            assert client.list_bindings(1, 0)["data"]["total"] == count
            assert client.bind_axb(unique_hk("1"), unique_hk("2"), 0)["code"] == 0
        finally:
            restored.stop()


def test_licence_is_declared() -> None:
    """Apache-2.0: the full text at the root, and in the package's metadata."""
    import tomllib
    from importlib.metadata import metadata

    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert metadata("pns").get("License-Expression") == "Apache-2.0"
    for name in ("CHANGELOG.md", "SECURITY.md"):
        assert (REPO / name).stat().st_size > 500, name


def test_a_skipped_test_fails_in_ci(tmp_path: Path) -> None:
    """The rule tests/conftest.py gives CI (``CI=true``): a test skipped for want of a
    prerequisite fails the run instead; a developer's machine may still skip."""
    (tmp_path / "test_prerequisite.py").write_text(
        "import pytest\n\n\ndef test_needs_what_is_missing():\n"
        "    pytest.skip('no prerequisite here')\n")
    root = Path(__file__).resolve().parent.parent

    def outcome(ci: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest",
             "-q", str(tmp_path / "test_prerequisite.py")],
            cwd=root, env={**os.environ, "CI": ci}, capture_output=True, text=True, timeout=120)
        return result.stdout.strip().splitlines()[-1]

    assert "1 failed" in outcome("true")
    assert "1 skipped" in outcome("")
