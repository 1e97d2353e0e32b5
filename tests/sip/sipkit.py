"""Harness for the SIP tests and the SIP load bench: ports, Kamailio, sipp, message logs.

Everything runs on 127.0.0.1. Ports are picked free by the kernel and checked again right before
use: a stale process on a port (a leftover sipp silently steals packets) is refused, not shared.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCENARIOS = HERE / "scenarios"
KAMAILIO_CFG = REPO / "deploy" / "kamailio" / "kamailio.cfg"
KAMAILIO_HTTP_JS = REPO / "deploy" / "kamailio" / "kamailio-http.js"
HOST = "127.0.0.1"

MISSING_HINT = "run `scripts/system-deps` (as root) to install Kamailio and sipp"


class HarnessError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# binaries and ports


def require_binaries(*names: str) -> dict[str, str]:
    """Paths of the binaries, or HarnessError naming the missing ones and the fix."""
    found: dict[str, str] = {}
    missing = []
    for name in names:
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
        )
        if path:
            found[name] = path
        else:
            missing.append(name)
    if missing:
        raise HarnessError(f"{', '.join(missing)} not found: {MISSING_HINT}")
    return found


_handed_out: set[int] = set()


def port_is_free(port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # as a server binds: a listener conflicts, a closed connection's TIME_WAIT does not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(kind: int = socket.SOCK_DGRAM, span: int = 1) -> int:
    """A port free on 127.0.0.1 (with `span` > 1: port .. port+span-1 all free, for sipp's
    media ports). Never the same one twice in this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        ports = range(port, port + span)
        if port + span > 65535 or any(p in _handed_out for p in ports):
            continue
        if all(port_is_free(p, kind) for p in ports):
            _handed_out.update(ports)
            return port
    raise HarnessError("no free port found")


def ensure_free(port: int, what: str, kind: int = socket.SOCK_DGRAM) -> None:
    if not port_is_free(port, kind):
        raise HarnessError(
            f"port {port} on {HOST} ({what}) is busy: a stale process holds it; refusing to start"
        )


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
                 timeout: float = 5.0) -> int | None:
    """Stops one process that this harness started (by its own pid)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} not readable)"
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------------
# a bare SIP client (readiness checks, hand-made requests)


def sip_request(port: int, text: str, timeout: float = 2.0, want_final: bool = True,
                local: socket.socket | None = None) -> list[str]:
    """Sends one request over UDP and returns the replies received until a final one (or until
    `timeout`)."""
    own = local is None
    sock = local or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if own:
            sock.bind((HOST, 0))
        lport = sock.getsockname()[1]
        data = text.replace("{lport}", str(lport)).replace("\n", "\r\n").encode()
        sock.sendto(data, (HOST, port))
        replies: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                raw, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            reply = raw.decode(errors="replace")
            replies.append(reply)
            m = re.match(r"SIP/2\.0 (\d{3})", reply)
            if want_final and m and int(m.group(1)) >= 200:
                break
        return replies
    finally:
        if own:
            sock.close()


def options_request(port: int, user: str = "") -> str:
    ruri = f"sip:{user + '@' if user else ''}{HOST}:{port}"
    return (
        f"OPTIONS {ruri} SIP/2.0\n"
        f"Via: SIP/2.0/UDP {HOST}:{{lport}};branch=z9hG4bK-{uuid.uuid4().hex}\n"
        f"From: <sip:probe@{HOST}:{{lport}}>;tag={uuid.uuid4().hex[:10]}\n"
        f"To: <{ruri}>\n"
        f"Call-ID: {uuid.uuid4().hex}@{HOST}\n"
        "CSeq: 1 OPTIONS\n"
        "Max-Forwards: 70\n"
        "Content-Length: 0\n\n"
    )


# ---------------------------------------------------------------------------------------------
# Kamailio


@dataclass
class Kamailio:
    """One Kamailio running deploy/kamailio/kamailio.cfg in the foreground, its settings in its
    environment only (plain values, as the systemd unit gives them): nothing secret on its
    command line."""

    workdir: Path
    settings: dict[str, str]  # NAME -> plain value (no quotes), passed as environment variables
    port: int
    shm_mb: int = 128
    proc: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()  # more kamailio options (e.g. the bench's -x tlsf)
    config: Path = KAMAILIO_CFG

    @property
    def log(self) -> Path:
        return self.workdir / "kamailio.log"

    def command(self) -> list[str]:
        binary = require_binaries("kamailio")["kamailio"]
        return [binary, "-DD", "-E", "-Y", str(self.workdir / "run"), "-f", str(self.config),
                "-m", str(self.shm_mb), *self.extra_args]

    def environment(self) -> dict[str, str]:
        """Only PATH and the settings: nothing of the test's own environment leaks in."""
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "PNS_HTTP_JS": str(KAMAILIO_HTTP_JS), **self.settings,
                "SIP_LISTEN": f"udp:{HOST}:{self.port}"}

    def pids(self) -> list[int]:
        """The main process and all its descendants (from /proc)."""
        if self.proc is None:
            return []
        parent: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += [p for p, pp in parent.items() if pp == pid]
        return found

    def start(self, ready_timeout: float = 15.0, attempts: int = 3) -> None:
        """Start and wait for OPTIONS to be answered. A port found free can be taken before
        Kamailio binds it (another test process's ephemeral UDP socket: the suite runs on two
        workers): then again on another free port, ``attempts`` times in all."""
        for attempt in range(attempts):
            try:
                self._start_once(ready_timeout)
                return
            except HarnessError as exc:
                if "Address already in use" not in str(exc) or attempt == attempts - 1:
                    raise
                self.port = free_port()

    def _start_once(self, ready_timeout: float) -> None:
        ensure_free(self.port, "Kamailio")
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.environment())
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                hint = ""
                if "could not find module" in self.log.read_text(errors="replace"):
                    hint = f"\n(a Kamailio module is missing: {MISSING_HINT})"
                raise HarnessError(
                    f"Kamailio exited with {self.proc.returncode}:\n{tail(self.log)}{hint}")
            replies = sip_request(self.port, options_request(self.port), timeout=0.3)
            if any(r.startswith("SIP/2.0 200") for r in replies):
                return
        self.stop()
        raise HarnessError(f"Kamailio did not answer OPTIONS in time:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


# ---------------------------------------------------------------------------------------------
# sipp and its message logs


@dataclass
class Message:
    direction: str  # "in" (received by this sipp) or "out" (sent)
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.first_line.split(" ", 1)[0] if self.is_request else ""

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.first_line.split()[1])

    @property
    def ruri(self) -> str:
        return self.first_line.split()[1] if self.is_request else ""

    @property
    def head(self) -> str:
        return self.text.split("\n\n", 1)[0]

    def headers(self, name: str) -> list[str]:
        compact = {"from": "f", "to": "t", "call-id": "i", "contact": "m", "via": "v"}
        names = {name.lower(), compact.get(name.lower(), name.lower())}
        out = []
        for line in self.head.split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() in names:
                out.append(value.strip())
        return out

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    @property
    def call_id(self) -> str:
        return self.header("Call-ID") or ""


_SEPARATOR = re.compile(r"^-{20,} .*$", re.M)


def parse_message_log(path: Path) -> list[Message]:
    """The messages of a sipp -trace_msg log, in order."""
    if not path.exists():
        return []
    out: list[Message] = []
    for block in _SEPARATOR.split(path.read_text(errors="replace")):
        block = block.replace("\r\n", "\n").strip("\n")
        if not block:
            continue
        title, _, rest = block.partition("\n")
        if "message received" in title:
            direction = "in"
        elif "message sent" in title:
            direction = "out"
        else:
            continue
        out.append(Message(direction, rest.strip("\n") + "\n"))
    return out


def user_of(uri_or_header: str) -> str:
    m = re.search(r"sips?:([^@;>]+)@", uri_or_header)
    return m.group(1) if m else ""


def display_of(header: str) -> str:
    m = re.match(r'\s*"?([^"<]*?)"?\s*<', header)
    return m.group(1).strip() if m else ""


def write_csv(path: Path, rows: Iterable[Sequence[str]]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(";".join(r) + ";\n" for r in rows))
    return path


@dataclass
class SippRun:
    name: str
    returncode: int | None
    messages: list[Message]
    stdout: Path
    errors: Path
    duration: float

    def received(self) -> list[Message]:
        return [m for m in self.messages if m.direction == "in"]

    def sent(self) -> list[Message]:
        return [m for m in self.messages if m.direction == "out"]

    def explain(self) -> str:
        return (f"sipp {self.name} exited {self.returncode}\n--- errors:\n{tail(self.errors, 30)}"
                f"\n--- screen:\n{tail(self.stdout, 25)}")


@dataclass
class Sipp:
    """One sipp process: a UAS started in the background, or a UAC run to its end."""

    workdir: Path
    name: str
    scenario: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    host: str = HOST  # the local address it sends from (another loopback address: a stranger)

    @property
    def message_log(self) -> Path:
        return self.workdir / f"{self.name}.messages.log"

    @property
    def error_log(self) -> Path:
        return self.workdir / f"{self.name}.errors.log"

    @property
    def screen_log(self) -> Path:
        return self.workdir / f"{self.name}.screen.log"

    def _command(self, remote: str | None, extra: list[str], trace: bool) -> list[str]:
        binary = require_binaries("sipp")["sipp"]
        cmd = [binary] + ([remote] if remote else [])
        cmd += ["-sf", str(SCENARIOS / self.scenario), "-i", self.host, "-p", str(self.port),
                "-mp", str(free_port(span=4)), "-cp", str(free_port()), "-nostdin",
                "-trace_err", "-error_file", str(self.error_log)]
        if trace:
            cmd += ["-trace_msg", "-message_file", str(self.message_log)]
        return cmd + extra

    def start(self, *args: str, trace: bool = True) -> Sipp:
        """Starts in the background (a UAS): args are extra sipp options."""
        ensure_free(self.port, f"sipp {self.name}")
        self.started = time.monotonic()
        with open(self.screen_log, "wb") as out:
            self.proc = subprocess.Popen(self._command(None, list(args), trace), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # sipp binds at once; give it a moment and check it did not exit (port, scenario).
        time.sleep(0.15)
        if self.proc.poll() is not None:
            raise HarnessError(f"sipp {self.name} exited at start:\n{tail(self.screen_log)}\n"
                               f"{tail(self.error_log)}")
        return self

    def finish(self, timeout: float = 10.0, stop: bool = True) -> SippRun:
        """Waits for a background sipp (up to `timeout`), else stops it; returns its run."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if not stop:
                raise
            stop_process(self.proc)
        return self._result(self.proc.returncode)

    def stop(self) -> SippRun:
        stop_process(self.proc)
        return self._result(self.proc.returncode if self.proc else None)

    def run(self, remote_port: int, *args: str, timeout: float = 30.0,
            trace: bool = True) -> SippRun:
        """Runs a UAC to its end against 127.0.0.1:remote_port."""
        ensure_free(self.port, f"sipp {self.name}")
        self.started = time.monotonic()
        with open(self.screen_log, "wb") as out:
            self.proc = subprocess.Popen(
                self._command(f"{HOST}:{remote_port}", list(args), trace), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
                raise HarnessError(f"sipp {self.name} did not finish in {timeout} s:\n"
                                   f"{tail(self.screen_log)}") from None
        return self._result(self.proc.returncode)

    def _result(self, returncode: int | None) -> SippRun:
        return SippRun(self.name, returncode, parse_message_log(self.message_log),
                       self.screen_log, self.error_log, time.monotonic() - self.started)
