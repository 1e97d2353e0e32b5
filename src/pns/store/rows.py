"""Rows ↔ records, shared by every SQL store: the column lists and their order live here once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..model import Account, AccountChanges, CallRecord, EventState, OutboxEvent, Role
from ..vault import Keyring

ACCOUNT_COLUMNS = (
    "id, name, access_key, access_secret, role, enabled, audio_when_call_fail, "
    "audio_when_dtmf_need, audio_when_dtmf_err, callback_url, previous_secret, "
    "previous_secret_until, created_at, cool_off_seconds"
)
RECORD_COLUMNS = (
    "call_id, account_id, bind_id, customer_bind_id, business_id, did, caller, callee, "
    "call_status, call_status_msg, duration, start_at, ring_at, answer_at, hangup_at, "
    "hangup_cause, hangup_code, hangup, record_file, reported_at, id"
)
EVENT_COLUMNS = (
    "event_id, account_id, kind, body, created_at, next_attempt_at, attempts, state, "
    "last_error, call_id"
)


def account_from_row(row: Sequence[Any], keyring: Keyring) -> Account:
    return Account(
        id=row[0], name=row[1], access_key=row[2],
        access_secret=keyring.unseal(row[3], secret_context("access_secret", row[2])),
        role=Role(row[4]), enabled=bool(row[5]), audio_when_call_fail=row[6],
        audio_when_dtmf_need=row[7], audio_when_dtmf_err=row[8], callback_url=row[9],
        previous_secret=keyring.unseal(row[10], secret_context("previous_secret", row[2])),
        previous_secret_until=row[11], created_at=row[12], cool_off_seconds=row[13],
    )


SECRET_COLUMNS = ("access_secret", "previous_secret")


def secret_context(column: str, access_key: str) -> str:
    """What a sealed secret is bound to: it opens only in its own column and account."""
    return f"accounts.{column}:{access_key}"


def seal_secret_columns(columns: dict[str, Any], keyring: Keyring,
                        access_key: str) -> dict[str, Any]:
    """An update's columns with its secrets sealed."""
    return {
        column: keyring.seal(value, secret_context(column, access_key))
        if column in SECRET_COLUMNS else value
        for column, value in columns.items()
    }


def changes_as_columns(changes: AccountChanges) -> dict[str, Any]:
    """The columns an update sets (None: left as it is). ``sqlite3`` binds a bool as 1 or 0,
    the integer SQLite keeps."""
    columns = {
        "enabled": changes.enabled,
        "audio_when_call_fail": changes.audio_when_call_fail,
        "audio_when_dtmf_need": changes.audio_when_dtmf_need,
        "audio_when_dtmf_err": changes.audio_when_dtmf_err,
        "callback_url": changes.callback_url,
        "access_secret": changes.access_secret,
        "previous_secret": changes.previous_secret,
        "previous_secret_until": changes.previous_secret_until,
        "cool_off_seconds": changes.cool_off_seconds,
    }
    return {column: value for column, value in columns.items() if value is not None}


def event_from_row(row: Sequence[Any]) -> OutboxEvent:
    return OutboxEvent(
        event_id=row[0], account_id=row[1], kind=row[2], body=bytes(row[3]),
        created_at=row[4], next_attempt_at=row[5], attempts=row[6], state=EventState(row[7]),
        last_error=row[8], call_id=row[9],
    )


def record_values(record: CallRecord) -> tuple[Any, ...]:
    """A call record's fields in declaration order (the order of its columns)."""
    return tuple(getattr(record, field) for field in record.__struct_fields__)


def redact(url: str) -> str:
    """A store URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))
