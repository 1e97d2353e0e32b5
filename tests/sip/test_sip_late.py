"""In-dialog requests that reach the switch when uac's From/To rewrite does not run.

The uac module rewrites From/To of a request within a dialog from the dialog module's
callbacks, and the dialog module runs them only while the dialog is live: after the BYE (the
dialog stays known until the BYE's transaction ends) and before the ACK of the 200 it runs none.
A request relayed then would reach the other party with the sender's real number. Under load a
late ACK did exactly that. Here both parties are plain UDP sockets driven by the test, so each
request arrives at a known point of the dialog: the callee must receive nothing holding the
caller's number, and the switch must drop the ACK and refuse the rest.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .conftest import Switch
from .sipkit import HOST, ensure_free
from .stub_pns import Answer
from .test_sip_switch import _envelope

CALLER = "85251116001"  # the caller's real number: must never reach the callee
CALLEE = "85262226001"
DID = "85235556001"


class _Party:
    """One UDP endpoint of the test: sends requests and replies, keeps what it received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.received: list[str] = []
        self._unclaimed: list[str] = []  # received, not yet returned by wait_for

    def send(self, text: str, port: int) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), (HOST, port))

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 5.0) -> str:
        """The first message received and not claimed yet that is `wanted`."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self._unclaimed:
                if wanted(msg):
                    self._unclaimed.remove(msg)
                    return msg
            if time.monotonic() >= deadline:
                break
            self._receive(deadline)
        raise AssertionError(f"nothing wanted arrived in {timeout} s; got:\n"
                             + "\n---\n".join(self.received[-5:]))

    def drain(self, seconds: float) -> list[str]:
        """Everything received during the next `seconds` and not claimed before."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline)
        out, self._unclaimed = self._unclaimed, []
        return out

    def _receive(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            raw, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return
        msg = raw.decode(errors="replace").replace("\r\n", "\n")
        self.received.append(msg)
        self._unclaimed.append(msg)


@contextmanager
def _party(port: int = 0) -> Iterator[_Party]:
    if port:
        ensure_free(port, "the test's gateway")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, port))
        yield _Party(sock)


def _headers(msg: str, name: str) -> list[str]:
    return [m.group(1).strip()
            for m in re.finditer(rf"^{name}:(.*)$", msg.split("\n\n", 1)[0], re.M | re.I)]


def _header(msg: str, name: str) -> str:
    values = _headers(msg, name)
    assert values, f"no {name} in:\n{msg}"
    return values[0]


def _is_request(method: str) -> Callable[[str], bool]:
    return lambda msg: msg.startswith(f"{method} ")


def _is_reply(status: int, cseq: str) -> Callable[[str], bool]:
    return lambda msg: (msg.startswith(f"SIP/2.0 {status} ")
                        and _header(msg, "CSeq") == cseq)


def _is_final(cseq: str) -> Callable[[str], bool]:
    return lambda msg: (re.match(r"SIP/2\.0 [2-6]\d\d ", msg) is not None
                        and _header(msg, "CSeq") == cseq)


def _reply(request: str, status: str, to_tag: str = "", contact: str = "") -> str:
    """A callee's reply to `request`: its Vias, Record-Routes, From, To, Call-ID and CSeq."""
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in _headers(request, "Via")]
    lines += [f"Record-Route: {r}" for r in _headers(request, "Record-Route")]
    to = _header(request, "To")
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {_header(request, 'From')}", f"To: {to}",
              f"Call-ID: {_header(request, 'Call-ID')}", f"CSeq: {_header(request, 'CSeq')}"]
    if contact:
        lines.append(f"Contact: {contact}")
    return "\n".join([*lines, "Content-Length: 0", "", ""])


class _Dialog:
    """The caller's side of one call through the switch, as a phone builds its requests."""

    def __init__(self, caller: _Party, switch_port: int) -> None:
        self.caller = caller
        self.switch_port = switch_port
        self.call_id = f"{uuid.uuid4().hex}@{HOST}"
        self.from_ = f'"{CALLER}" <sip:{CALLER}@{HOST}:{caller.port}>;tag={uuid.uuid4().hex[:10]}'
        self.to = f"<sip:{DID}@{HOST}:{switch_port}>"
        self.target = ""
        self.routes: list[str] = []

    def invite(self) -> str:
        return (
            f"INVITE sip:{DID}@{HOST}:{self.switch_port} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch=z9hG4bK-{uuid.uuid4().hex}\n"
            f"From: {self.from_}\nTo: {self.to}\nCall-ID: {self.call_id}\nCSeq: 1 INVITE\n"
            f"Contact: <sip:{CALLER}@{HOST}:{self.caller.port}>\n"
            f"P-Asserted-Identity: <sip:{CALLER}@{HOST}>\n"
            "Max-Forwards: 70\nContent-Length: 0\n\n")

    def established(self, ok: str) -> None:
        """The dialog as the 200 OK set it up: remote target, route set, the callee's tag."""
        self.to = _header(ok, "To")
        contact = _header(ok, "Contact")
        self.target = contact[contact.index("<") + 1:contact.index(">")]
        self.routes = list(reversed(_headers(ok, "Record-Route")))

    def request(self, method: str, cseq: int) -> str:
        """A request within the dialog, sent along the route set (a fresh branch)."""
        route = "".join(f"Route: {r}\n" for r in self.routes)
        return (
            f"{method} {self.target} SIP/2.0\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.caller.port};branch=z9hG4bK-{uuid.uuid4().hex}\n"
            f"{route}From: {self.from_}\nTo: {self.to}\nCall-ID: {self.call_id}\n"
            f"CSeq: {cseq} {method}\nContact: <sip:{CALLER}@{HOST}:{self.caller.port}>\n"
            "Max-Forwards: 70\nContent-Length: 0\n\n")

    def send(self, text: str) -> None:
        self.caller.send(text, self.switch_port)


def _assert_no_caller_trace(messages: list[str], who: str) -> None:
    """As test_sip_switch.assert_no_trace: no message holds the caller's number, in full or
    national form, nor uac's Record-Route storage parameters."""
    for msg in messages:
        for form in (CALLER, CALLER[3:]):
            assert form not in msg, f"{who} received {CALLER!r} ({form}):\n{msg}"
        for leak in (";vsf=", ";vst=", "P-Asserted-Identity", "Remote-Party-ID"):
            assert leak not in msg, f"{who} received {leak}:\n{msg}"


def _answered_call(stub_switch: Switch, caller: _Party, gateway: _Party, callid: str,
                   reliable_ringing: bool = False) -> tuple[_Dialog, str]:
    """A call placed and answered (no ACK yet): the caller's dialog and the relayed INVITE.
    With `reliable_ringing` the callee first sends a reliable 183 (100rel) and the caller
    acknowledges it with a PRACK in the early dialog, which the callee answers."""
    assert stub_switch.stub is not None
    stub_switch.stub.answers[DID] = Answer(envelope=_envelope(
        0, {"callee": CALLEE, "callId": callid, "flag": 0, "bindType": 0}))
    dialog = _Dialog(caller, stub_switch.port)
    dialog.send(dialog.invite())
    invite = gateway.wait_for(_is_request("INVITE"))
    assert _header(invite, "To").startswith(f"<sip:{CALLEE}@")
    tag = uuid.uuid4().hex[:10]
    contact = f"<sip:{CALLEE}@{HOST}:{gateway.port}>"
    if reliable_ringing:
        ringing = _reply(invite, "183 Session Progress", tag, contact)
        gateway.send(ringing.replace("Content-Length:", "Require: 100rel\nRSeq: 1\n"
                                     "Content-Length:"), stub_switch.port)
        dialog.established(caller.wait_for(_is_reply(183, "1 INVITE")))
        dialog.send(dialog.request("PRACK", 2).replace("CSeq:", "RAck: 1 1 INVITE\nCSeq:"))
        prack = gateway.wait_for(_is_request("PRACK"))
        assert f"sip:{DID}@" in _header(prack, "From")
        gateway.send(_reply(prack, "200 OK"), stub_switch.port)
        caller.wait_for(_is_reply(200, "2 PRACK"))
    gateway.send(_reply(invite, "200 OK", tag, contact), stub_switch.port)
    dialog.established(caller.wait_for(_is_reply(200, "1 INVITE")))
    return dialog, invite


def test_late_requests_after_the_call_ended_never_reach_the_callee(
        stub_switch: Switch) -> None:
    """The call is answered, acknowledged and hung up (BYE answered); then the caller's ACK
    comes again, the BYE comes again (a retransmission and a new one) and an INFO follows. The
    switch still knows the dialog (it waits for the BYE's transaction to end) but uac no longer
    rewrites: none of them may reach the callee; the ACK is dropped, the others get 481 (the
    retransmitted BYE its transaction's 200 again)."""
    with _party() as caller, _party(stub_switch.gateway_port) as gateway:
        dialog, _ = _answered_call(stub_switch, caller, gateway, "3" * 19)
        ack = dialog.request("ACK", 1)
        dialog.send(ack)
        relayed_ack = gateway.wait_for(_is_request("ACK"))
        assert f"sip:{DID}@" in _header(relayed_ack, "From")  # the live dialog is rewritten
        bye = dialog.request("BYE", 2)
        dialog.send(bye)
        relayed_bye = gateway.wait_for(_is_request("BYE"))
        assert f"sip:{DID}@" in _header(relayed_bye, "From")
        gateway.send(_reply(relayed_bye, "200 OK"), stub_switch.port)
        caller.wait_for(_is_reply(200, "2 BYE"))
        during_call = list(gateway.received)

        # the call has ended; the switch keeps the dialog until the BYE's transaction ends
        dialog.send(ack)  # the ACK of the 200 again, as a late retransmission
        dialog.send(bye)  # the BYE again, unchanged: its transaction answers
        dialog.send(dialog.request("BYE", 3))
        dialog.send(dialog.request("INFO", 4))
        gateway.drain(1.0)
        after_call = gateway.received[len(during_call):]
        _assert_no_caller_trace(during_call, "callee")
        _assert_no_caller_trace(after_call, "callee")
        assert after_call == [], "relayed after the call's end:\n" + "\n".join(after_call)
        bye_again = caller.wait_for(_is_final("2 BYE"))
        late_bye = caller.wait_for(_is_final("3 BYE"))
        late_info = caller.wait_for(_is_final("4 INFO"))

    assert bye_again.startswith("SIP/2.0 200 ")
    assert late_bye.startswith("SIP/2.0 481 "), late_bye
    assert late_info.startswith("SIP/2.0 481 "), late_info


def test_a_request_before_the_ack_is_not_relayed_unmasked(stub_switch: Switch) -> None:
    """The callee rings reliably and the caller's PRACK goes through the early dialog
    rewritten. Then an INFO that overtakes the ACK of the 200 (two UDP workers, a loaded
    machine) finds the dialog not yet confirmed, when uac does not rewrite: it is refused with
    a retry hint, never relayed with the caller's number; the ACK and the requests after it
    are relayed rewritten."""
    with _party() as caller, _party(stub_switch.gateway_port) as gateway:
        dialog, _ = _answered_call(stub_switch, caller, gateway, "4" * 19,
                                   reliable_ringing=True)
        dialog.send(dialog.request("INFO", 3))
        gateway.drain(0.5)
        _assert_no_caller_trace(gateway.received, "callee")
        assert [m.split(" ", 1)[0] for m in gateway.received] == ["INVITE", "PRACK"]
        early_info = caller.wait_for(_is_final("3 INFO"))
        dialog.send(dialog.request("ACK", 1))
        gateway.wait_for(_is_request("ACK"))
        dialog.send(dialog.request("INFO", 4))
        info = gateway.wait_for(_is_request("INFO"))
        gateway.send(_reply(info, "200 OK"), stub_switch.port)
        caller.wait_for(_is_reply(200, "4 INFO"))
        dialog.send(dialog.request("BYE", 5))
        bye = gateway.wait_for(_is_request("BYE"))
        gateway.send(_reply(bye, "200 OK"), stub_switch.port)
        caller.wait_for(_is_reply(200, "5 BYE"))
        gateway.drain(0.2)
        received = list(gateway.received)

    _assert_no_caller_trace(received, "callee")
    assert early_info.startswith("SIP/2.0 500 "), early_info
    assert _headers(early_info, "Retry-After"), early_info
    assert [m.split(" ", 1)[0] for m in received] == ["INVITE", "PRACK", "ACK", "INFO", "BYE"]
    for relayed in (info, bye):
        assert f"sip:{DID}@" in _header(relayed, "From")
