"""Fixtures for the SIP tests: a real pns server, Kamailio switches in front of it (and in front
of a stand-in API for the failure paths), and a helper that places calls with sipp.

Needs the Debian packages of scripts/system-deps (kamailio + modules, sipp): without them every
test here fails with that hint rather than being skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pns.client import PnsClient

from .sipkit import (
    HOST,
    HarnessError,
    Kamailio,
    Sipp,
    SippRun,
    ensure_free,
    free_port,
    require_binaries,
    stop_process,
    tail,
    write_csv,
)
from .stub_pns import StubPns

# Prompts set on the customer accounts (the X owners), expected back in X-PNS-Prompt.
AXB_PROMPTS = {"--audio-when-call-fail": "axb-call-fail.wav",
               "--audio-when-dtmf-need": "axb-dtmf-need.wav",
               "--audio-when-dtmf-err": "axb-dtmf-err.wav"}
EXT_PROMPTS = {"--audio-when-call-fail": "ext-call-fail.wav",
               "--audio-when-dtmf-need": "ext-dtmf-need.wav",
               "--audio-when-dtmf-err": "ext-dtmf-err.wav"}
AXB_NUMBERS = [f"8523555{i:04d}" for i in range(1, 9)]  # X numbers of the AXB customer
EXT_NUMBER = "85235559001"  # X of the extension customer


@pytest.fixture(scope="session")
def sip_binaries() -> dict[str, str]:
    try:
        return require_binaries("kamailio", "sipp")
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


def _pns(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pns.cli", *args], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        raise HarnessError(f"pns {' '.join(args[:2])} failed: {proc.stdout}{proc.stderr}")
    return proc.stdout


def _account(store: str, name: str, role: str) -> dict[str, str]:
    out = _pns("account", "create", "--name", name, "--role", role, "--store", store)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@dataclass
class PnsServer:
    base_url: str
    store: str
    customer: PnsClient  # owns AXB_NUMBERS
    ext_customer: PnsClient  # owns EXT_NUMBER
    switch_key: str
    switch_secret: str
    log: Path
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def parties(self) -> tuple[str, str, str]:
        """Fresh real numbers (A, B, a stranger) never used before in this run."""
        n = next(self._seq)
        return f"8525111{n:04d}", f"8526222{n:04d}", f"8527333{n:04d}"

    def bind(self, a: str, b: str, expire: int = 120, flag: int = 0) -> dict[str, object]:
        env = self.customer.call("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": expire,
                                             "flag": flag})
        assert env["code"] == 0, env
        return env["data"]  # type: ignore[no-any-return]


def start_pns(store: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`pns serve` on 127.0.0.1:port, healthy (its output appended to `log`)."""
    ensure_free(port, "pns", socket.SOCK_STREAM)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pns.cli", "serve", "--host", HOST, "--port", str(port),
             "--store", store, "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PNS_CALLBACK_RETRY_FIRST": "1"})  # call records: retry soon
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise HarnessError(f"pns serve exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise HarnessError(f"pns serve not healthy in time:\n{tail(log)}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def pns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PnsServer]:
    work = tmp_path_factory.mktemp("pns")
    store = f"sqlite:///{work / 'pns.db'}"
    _pns("migrate", "--store", store)  # only serve and migrate create a store
    customer = _account(store, "sip-axb-customer", "customer")
    ext_customer = _account(store, "sip-ext-customer", "customer")
    switch = _account(store, "sip-switch", "switch")
    _pns("numbers", "add", "--account", customer["accessKey"], *AXB_NUMBERS, "--store", store)
    _pns("numbers", "add", "--account", ext_customer["accessKey"], EXT_NUMBER, "--store", store)
    for acc, prompts in ((customer, AXB_PROMPTS), (ext_customer, EXT_PROMPTS)):
        _pns("account", "set", acc["accessKey"],
             *itertools.chain.from_iterable(prompts.items()), "--store", store)

    port = free_port(socket.SOCK_STREAM)
    log = work / "pns.log"
    proc = start_pns(store, port, log)
    base = f"http://{HOST}:{port}"
    try:
        yield PnsServer(
            base_url=base, store=store,
            customer=PnsClient(base, customer["accessKey"], customer["accessSecret"]),
            ext_customer=PnsClient(base, ext_customer["accessKey"], ext_customer["accessSecret"]),
            switch_key=switch["accessKey"], switch_secret=switch["accessSecret"], log=log)
    finally:
        stop_process(proc)


@dataclass
class Switch:
    """A running Kamailio and the ports of what stands behind it."""

    kamailio: Kamailio
    gateway_port: int
    ivr_port: int | None
    workdir: Path
    stub: StubPns | None = None
    _runs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def port(self) -> int:
        return self.kamailio.port

    def calls(self, rows: list[tuple[str, str]], *, uac: str = "uac_call.xml",
              uas: str | None = "uas.xml", at: str = "gateway", arriving: int | None = None,
              calls: int | None = None, rate: int = 10, limit: int = 1, pause_ms: int = 200,
              uriparams: str = "", timeout: float = 30.0, host: str = HOST,
              caller_args: tuple[str, ...] = ()) -> tuple[SippRun, SippRun | None]:
        """Places calls through the switch: rows of (caller, request-URI user) from a CSV.

        A sipp UAS (scenario `uas`) listens at the gateway (or the IVR) first. `arriving` is how
        many calls must reach it: it then ends by itself after them; else it is stopped once
        the callers are done. `host`: the caller's own address. `caller_args`: more options of
        the caller's sipp. Returns the caller's run and the callee's run.
        """
        n = next(self._runs)
        calls = calls if calls is not None else len(rows)
        csv = write_csv(self.workdir / f"calls-{n}.csv", rows)
        callee = None
        if uas is not None:
            port = self.gateway_port if at == "gateway" else self.ivr_port
            assert port is not None
            callee = Sipp(self.workdir, f"{n}-callee", uas, port=port)
            extra = ["-d", str(pause_ms), "-recv_timeout", "10000"]
            if arriving:
                extra += ["-m", str(arriving)]
            callee.start(*extra)
        caller = Sipp(self.workdir, f"{n}-caller", uac, host=host)
        try:
            caller_run = caller.run(
                self.port, "-inf", str(csv), "-key", "uriparams", uriparams,
                "-m", str(calls), "-r", str(rate), "-l", str(limit), "-d", str(pause_ms),
                "-recv_timeout", "10000", *caller_args, timeout=timeout)
        finally:
            callee_run = None
            if callee is not None:
                callee_run = callee.finish(timeout=8.0) if arriving else callee.stop()
        return caller_run, callee_run

    def log_tail(self) -> str:
        return tail(self.kamailio.log, 30)


# The sources the switch in front of the real pns serves: 127.0.0.1 (every test's sipp), a
# subnet (127.0.0.4/31: .4 and .5) and an address that is not on this machine. 127.0.0.2 is the
# stranger of the trust tests.
TRUSTED = "192.0.2.10, 127.0.0.1,127.0.0.4/31"


# The options of deploy/systemd/kamailio-pns.service beyond the paths: what is shipped is tested.
KAMAILIO_ARGS = ("-x", "tlsf")


def _start_switch(workdir: Path, pns_url: str, key: str, secret: str, *, timeout: int,
                  ivr: bool, extra: dict[str, str] | None = None) -> Switch:
    """Kamailio from the environment only (plain values, no quotes: as the systemd unit)."""
    gateway = free_port()
    ivr_port = free_port() if ivr else None
    settings = {
        "PNS_URL": pns_url,
        "PNS_ACCESS_KEY": key,
        "PNS_ACCESS_SECRET": secret,
        "SIP_GATEWAY": f"sip:{HOST}:{gateway}",
        "PNS_TIMEOUT": str(timeout),
        "PNS_WORKERS": "4",
        "SIP_CHILDREN": "4",
    }
    if ivr_port:
        settings["SIP_IVR"] = f"sip:{HOST}:{ivr_port}"
    settings.update(extra or {})
    workdir.mkdir(parents=True, exist_ok=True)
    kam = Kamailio(workdir, settings, port=free_port(), extra_args=KAMAILIO_ARGS)
    kam.start()
    return Switch(kam, gateway, ivr_port, workdir)


@pytest.fixture(scope="session")
def switch(sip_binaries: dict[str, str], pns_server: PnsServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    """Kamailio in front of the real pns, with an IVR for "collect digits"."""
    sw = _start_switch(tmp_path_factory.mktemp("switch"), f"{pns_server.base_url}/api/pns/",
                       pns_server.switch_key, pns_server.switch_secret, timeout=2, ivr=True,
                       extra={"SIP_TRUSTED": TRUSTED})
    try:
        yield sw
    finally:
        sw.kamailio.stop()


@pytest.fixture(scope="session")
def stub_switch(sip_binaries: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    """Kamailio in front of a stand-in API (answers chosen per did), 1 s timeout, no IVR."""
    stub = StubPns("stubkey", "stub-secret-0123456789")
    api_port = free_port(socket.SOCK_STREAM)
    stub.start(api_port)
    sw = _start_switch(tmp_path_factory.mktemp("stub-switch"),
                       f"http://{HOST}:{api_port}/api/pns/", stub.access_key,
                       stub.access_secret, timeout=1, ivr=False,
                       extra={"REPORT_RETRY_FIRST": "1", "REPORT_RETRY_MAX_GAP": "2",
                              "REPORT_RETRY_SECONDS": "10"})
    sw.stub = stub
    try:
        yield sw
    finally:
        sw.kamailio.stop()
        stub.stop()


@pytest.fixture(scope="session")
def down_switch(sip_binaries: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    """Kamailio whose PNS_URL points at a port where nothing listens."""
    dead = free_port(socket.SOCK_STREAM)
    sw = _start_switch(tmp_path_factory.mktemp("down-switch"), f"http://{HOST}:{dead}/api/pns/",
                       "nokey", "nosecret", timeout=3, ivr=False)
    try:
        yield sw
    finally:
        sw.kamailio.stop()
