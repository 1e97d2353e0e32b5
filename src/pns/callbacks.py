"""Call records and callbacks: joining a report with its query, the CDR body, the error
callback, and the signature a receiver verifies.

Signature header: ``X-PNS-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "t.body")>``,
with the account's accessSecret; ``X-PNS-Event-Id`` lets the receiver drop duplicates (delivery
is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

import msgspec

from .model import Binding, CallRecord, CallRef, OutboxEvent

KIND_CALL_RECORD = "callRecord"
KIND_BINDING_ERROR = "bindingError"
_NORMAL_CAUSES = frozenset({"", "NORMAL_CLEARING", "NORMAL_UNSPECIFIED"})
# Hang-up codes of causes our own switch config reports by name alone (the FreeSWITCH table
# NXCloud points to): a call ended at the binding's maxDuration is ALLOTTED_TIMEOUT, 602.
_CAUSE_CODES = {"ALLOTTED_TIMEOUT": 602}
_CHINA_OFFSET = 8 * 3600
_encode = msgspec.json.Encoder().encode


class CallReport(msgspec.Struct, frozen=True):
    """What the switch reports of a finished call (action ``reportCall``)."""

    callId: str = ""
    startAt: int = 0
    ringAt: int = 0
    answerAt: int = 0
    hangupAt: int = 0
    hangupCause: str = ""
    hangupCode: int = 0
    hangup: int = 0
    recordFile: str = ""
    # Ours, optional: let a report be joined even if its query's callId was never stored
    # (the query's process crashed within milliseconds of answering).
    did: str = ""
    caller: str = ""


def call_status(report: CallReport) -> tuple[int, str]:
    """NXCloud's callStatus: 1 normal end (answered and cleared normally), 2 abnormal end."""
    if report.answerAt and report.hangupCause.upper() in _NORMAL_CAUSES:
        return 1, "Call Connected"
    if report.answerAt:
        return 2, report.hangupCause
    return 2, report.hangupCause or "NO_ANSWER"


def duration_of(report: CallReport) -> int:
    """Talk seconds: from answer to hang-up; 0 when never answered."""
    if not report.answerAt or report.hangupAt < report.answerAt:
        return 0
    return report.hangupAt - report.answerAt


def join_record(call: CallRef, report: CallReport, now: int) -> CallRecord:
    status, status_msg = call_status(report)
    return CallRecord(
        call_id=call.call_id, account_id=call.account_id, bind_id=call.bind_id,
        customer_bind_id=call.customer_bind_id, business_id=call.business_id, did=call.x,
        caller=call.caller, callee=call.callee, call_status=status,
        call_status_msg=status_msg, duration=duration_of(report), start_at=report.startAt,
        ring_at=report.ringAt, answer_at=report.answerAt, hangup_at=report.hangupAt,
        hangup_cause=report.hangupCause,
        hangup_code=report.hangupCode or _CAUSE_CODES.get(report.hangupCause.upper(), 0),
        hangup=report.hangup,
        record_file=report.recordFile, reported_at=now,
    )


def record_fields(record: CallRecord) -> dict[str, Any]:
    """The CDR as NXCloud pushes it (plus ringAt and bindType-free extras kept out)."""
    return {
        "id": record.id, "businessId": record.business_id,
        "customerBindId": record.customer_bind_id, "bindId": record.bind_id,
        "callId": record.call_id, "did": record.did, "caller": record.caller,
        "callee": record.callee, "callStatus": record.call_status,
        "callStatusMsg": record.call_status_msg, "duration": record.duration,
        "startAt": record.start_at, "ringAt": record.ring_at, "answerAt": record.answer_at,
        "hangupAt": record.hangup_at, "hangupCause": record.hangup_cause,
        "hangupCode": record.hangup_code, "hangup": record.hangup,
        "recordFile": record.record_file,
    }


# NXCloud's pnsType of each bindType (modes.md); 4 is the v1 AXE among v1 bindings.
PNS_TYPES = {0: "axb", 1: "ax", 2: "axg", 3: "axyb", 4: "axe", 5: "axeyb", 6: "xyb", 7: "nxeyb"}


def v1_record_fields(record: CallRecord, binding: Binding) -> dict[str, Any]:
    """The CDR of a binding made through the v1 API, in NXCloud's newer shape (§6.2): the
    call, and in ``legList`` its inbound leg (callType 1: caller → number dialled) and its
    outbound leg (callType 2: the number shown → callee), both from the switch's report.
    ``callStatus`` is a string there; the recording covers the bridged call, so it is on both
    legs; the switch reports no per-leg uuid or carrier id (empty)."""
    answered = record.answer_at
    ring_end = answered or record.hangup_at
    leg = {
        "callStartAt": record.start_at,
        "callAnswerAt": answered,
        "callFinishAt": record.hangup_at,
        "duration": record.duration,
        "callRecordFile": record.record_file,
        "hangupType": record.hangup,
        "hangupCause": record.hangup_cause,
        "hangupCode": record.hangup_code,
        "uuid": "",
        "fsCallStatus": record.call_status,
        "fsCallStatusMsg": record.call_status_msg,
        "vosCallId": "",
        "allExtension": binding.extension,
    }
    inbound = {"callType": 1, "caller": record.caller, "callee": record.did, **leg,
               "callRingAt": 0, "ringDuration": 0}
    outbound = {"callType": 2, "caller": binding.display(record.did, record.caller),
                "callee": record.callee, **leg, "callRingAt": record.ring_at,
                "ringDuration": max(ring_end - record.ring_at, 0) if record.ring_at else 0}
    return {
        "bindId": record.bind_id, "customerBindId": record.customer_bind_id,
        "businessId": record.business_id, "callId": record.call_id, "caller": record.caller,
        "did": record.did, "didX": binding.x, "didY": binding.y,
        "extensionX": binding.extension, "callee": record.callee,
        "pnsType": PNS_TYPES.get(binding.bind_type, ""),
        "callStatus": str(record.call_status), "callStatusMsg": record.call_status_msg,
        "ext": binding.ext, "customerUserId": binding.customer_user_id,
        "legList": [inbound, outbound],
    }


def new_event(account_id: int, kind: str, body: dict[str, Any], now: int,
              call_id: str = "") -> OutboxEvent:
    return OutboxEvent(event_id=secrets.token_hex(16), account_id=account_id, kind=kind,
                       body=_encode(body), created_at=now, next_attempt_at=now, call_id=call_id)


def binding_error_body(request_id: str, caller: str, did: str, now: float) -> dict[str, Any]:
    """NXCloud's error callback for a call to an X without a binding. ``occurrenceTime`` is
    China time as NXCloud sends it; ``occurrenceAt`` (ours) is epoch seconds."""
    china = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now + _CHINA_OFFSET))
    return {
        "code": 10013, "msg": "binding not exist", "requestId": request_id,
        "data": {"action": "queryAXB", "requestParams": {"caller": caller, "did": did},
                 "occurrenceTime": china, "occurrenceAt": int(now)},
    }


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_callback(body: bytes, header: str, secret: str, tolerance: int = 300,
                    now: float | None = None) -> bool:
    """For receivers: is this callback from pns, and recent? Constant-time comparison."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))
