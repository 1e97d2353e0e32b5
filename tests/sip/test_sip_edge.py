"""The switch's edge: what Kamailio (deploy/kamailio/kamailio.cfg) exposes and whom it serves.

- Its settings come from the environment only: no secret on the command line of any of its
  processes (`ps` shows every user the command lines), and calls work.
- topoh masks with its own key (TOPOH_MASK_KEY), else a random one per start: never with the
  switch's accessSecret. Masking is deterministic for a key, so the masked Contact and Call-ID
  of one INVITE, relayed by switches with different settings, show which key was used.
- Initial requests are served only from SIP_TRUSTED (addresses and subnets); anything else gets
  403 and never reaches pns (pns's own query counter proves it). Without SIP_TRUSTED the switch
  says so loudly at start.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from .conftest import KAMAILIO_ARGS, PnsServer, Switch, _start_switch
from .sipkit import (
    HOST,
    KAMAILIO_CFG,
    KAMAILIO_HTTP_JS,
    REPO,
    options_request,
    sip_request,
    tail,
)
from .stub_pns import Answer
from .test_sip_switch import assert_no_trace, assert_ok, finals, invites


def _queries_answered(pns: PnsServer) -> int:
    """queryAXB requests pns has answered so far, whatever their code (from /metrics)."""
    with urllib.request.urlopen(f"{pns.base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(v) for v in re.findall(
        r'^pns_requests_total\{action="queryAXB",code="[^"]*"\} (\S+)$', text, re.M)))


# ---------------------------------------------------------------------------------------------
# settings from the environment


def test_no_secret_on_any_command_line_and_calls_work(pns_server: PnsServer,
                                                       switch: Switch) -> None:
    pids = switch.kamailio.pids()
    assert len(pids) >= 10, "the main process and its workers"
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline.startswith(b"/usr/sbin/kamailio") or b"kamailio" in cmdline
        for secret in (pns_server.switch_secret, pns_server.switch_key):
            assert secret.encode() not in cmdline, f"process {pid}: {cmdline!r}"
        assert b"-A" not in cmdline.split(b"\0")
    # the settings did arrive (from the environment): a call is routed by the signed query
    a, b, _ = pns_server.parties()
    x = str(pns_server.bind(a, b)["did"])
    caller, callee = switch.calls([(a, x)], arriving=1)
    assert_ok(caller)
    assert_ok(callee)
    [inv] = invites(callee)
    assert inv.ruri.startswith(f"sip:{b}@"), inv.ruri
    log = switch.kamailio.log.read_text(errors="replace")
    assert pns_server.switch_secret not in log


# ---------------------------------------------------------------------------------------------
# topoh's key


_CONTACT = "<sip:85251117777@198.51.100.7:5060>"
_CALL_ID = "edge-topoh-3f9a2c@198.51.100.7"


def _masked(stub_switch: Switch, workdir: Path, extra: dict[str, str]) -> tuple[str, str]:
    """Starts a switch in front of the stand-in API with these extra settings, relays one fixed
    INVITE through it and returns the masked (Contact, Call-ID) the gateway received."""
    stub = stub_switch.stub
    assert stub is not None
    did = "85235554701"
    stub.answers[did] = Answer(envelope={"code": 0, "msg": "success", "requestId": "1" * 19,
                                         "data": {"callee": "85262227777", "callId": "7" * 19,
                                                  "flag": 0, "bindType": 0}})
    sw = _start_switch(workdir, stub_switch.kamailio.settings["PNS_URL"], stub.access_key,
                       stub.access_secret, timeout=1, ivr=False, extra=extra)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gateway:
            gateway.bind((HOST, sw.gateway_port))
            gateway.settimeout(5)
            invite = (
                f"INVITE sip:{did}@{HOST}:{sw.port} SIP/2.0\n"
                f"Via: SIP/2.0/UDP {HOST}:{{lport}};branch=z9hG4bK-{uuid.uuid4().hex}\n"
                f"From: <sip:85251117777@{HOST}>;tag=edge1\n"
                f"To: <sip:{did}@{HOST}>\n"
                f"Call-ID: {_CALL_ID}\n"
                "CSeq: 1 INVITE\n"
                f"Contact: {_CONTACT}\n"
                "Max-Forwards: 70\n"
                "Content-Length: 0\n\n")
            sip_request(sw.port, invite, timeout=0.3, want_final=False)
            raw, _ = gateway.recvfrom(65535)
    finally:
        sw.kamailio.stop()
    text = raw.decode(errors="replace")
    contact = re.search(r"^(?:Contact|m):\s*(.*?)\r?$", text, re.M | re.I)
    call_id = re.search(r"^(?:Call-ID|i):\s*(.*?)\r?$", text, re.M | re.I)
    assert contact and call_id, text
    assert "198.51.100.7" not in contact.group(1) and _CALL_ID not in call_id.group(1), text
    return contact.group(1), call_id.group(1)


def test_topoh_never_masks_with_the_access_secret(stub_switch: Switch, tmp_path: Path) -> None:
    assert stub_switch.stub is not None
    secret = stub_switch.stub.access_secret
    # what masking with the switch's accessSecret looks like, twice (deterministic per key)
    with_secret = _masked(stub_switch, tmp_path / "k1", {"TOPOH_MASK_KEY": secret})
    assert _masked(stub_switch, tmp_path / "k2", {"TOPOH_MASK_KEY": secret}) == with_secret
    own_key = _masked(stub_switch, tmp_path / "k3", {"TOPOH_MASK_KEY": "another-key-0451"})
    assert own_key[0] != with_secret[0] and own_key[1] != with_secret[1]
    # no TOPOH_MASK_KEY: neither the secret's masking nor the same key twice (random per start)
    default1 = _masked(stub_switch, tmp_path / "d1", {})
    default2 = _masked(stub_switch, tmp_path / "d2", {})
    for masked in (default1, default2):
        assert masked[0] != with_secret[0] and masked[1] != with_secret[1], masked
    assert default1 != default2
    log = (tmp_path / "d1" / "kamailio.log").read_text(errors="replace")
    assert "TOPOH_MASK_KEY is not set" in log


# ---------------------------------------------------------------------------------------------
# SIP_TRUSTED


def test_untrusted_source_gets_403_and_never_reaches_pns(pns_server: PnsServer,
                                                         switch: Switch) -> None:
    a, b, _ = pns_server.parties()
    x = str(pns_server.bind(a, b)["did"])
    queries = _queries_answered(pns_server)

    # A, bound to X, calls from 127.0.0.2: not in SIP_TRUSTED
    caller, callee = switch.calls([(a, x)], uac="uac_reject.xml", host="127.0.0.2")
    assert_ok(caller)
    assert [m.status for m in finals(caller)] == [403]
    assert invites(callee) == []
    assert_no_trace(caller, [b], "the stranger")
    # other initial requests too
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.2", 0))
        replies = sip_request(switch.port, options_request(switch.port), local=stranger)
    assert replies and replies[-1].startswith("SIP/2.0 403"), replies
    time.sleep(0.5)
    assert _queries_answered(pns_server) == queries, "an untrusted INVITE reached pns"

    # the same call from 127.0.0.5 (in the trusted 127.0.0.4/31) is connected
    caller, callee = switch.calls([(a, x)], arriving=1, host="127.0.0.5")
    assert_ok(caller)
    assert_ok(callee)
    [inv] = invites(callee)
    assert inv.ruri.startswith(f"sip:{b}@"), inv.ruri
    assert _queries_answered(pns_server) == queries + 1
    refused = [line for line in switch.kamailio.log.read_text(errors="replace").splitlines()
               if "untrusted 127.0.0.2" in line]
    assert refused and all(a not in line for line in refused), refused


def test_without_sip_trusted_the_switch_warns_at_start(switch: Switch,
                                                       stub_switch: Switch) -> None:
    warned = [line for line in stub_switch.kamailio.log.read_text(errors="replace").splitlines()
              if "SIP_TRUSTED is not set" in line]
    assert len(warned) == 1 and "ALERT" in warned[0], tail(stub_switch.kamailio.log)
    assert "SIP_TRUSTED is not set" not in switch.kamailio.log.read_text(errors="replace")


def test_the_systemd_unit_and_its_environment_file_make_a_valid_switch(tmp_path: Path) -> None:
    """deploy/systemd/kamailio-pns.service passes no setting on the command line, only through
    its EnvironmentFile; its command with deploy/kamailio/kamailio.env.example (paths moved
    here) is a valid config, with the options the tests run (KAMAILIO_ARGS)."""
    unit = (REPO / "deploy" / "systemd" / "kamailio-pns.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert re.search(r"^EnvironmentFile=/etc/pns/kamailio\.env$", unit, re.M)
    args = shlex.split(exec_start)
    assert "-A" not in args and not any(a.startswith("--modparam") for a in args), exec_start
    assert " ".join(KAMAILIO_ARGS) in exec_start
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")}
    for line in (REPO / "deploy" / "kamailio" / "kamailio.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    assert {"PNS_ACCESS_SECRET", "SIP_TRUSTED", "TOPOH_MASK_KEY"} <= set(env)
    env |= {"PNS_HTTP_JS": str(KAMAILIO_HTTP_JS), "SIP_LISTEN": f"udp:{HOST}:5060"}
    args = [a.replace("/etc/pns/kamailio.cfg", str(KAMAILIO_CFG))
            .replace("/run/kamailio-pns", str(tmp_path)) for a in args]
    proc = subprocess.run([*args, "-c"], capture_output=True, text=True, timeout=30, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "config file ok" in out, out[-3000:]
