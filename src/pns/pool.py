"""The operators' changes to the pool of virtual numbers, and what each one reports.

One place for ``pns numbers add/import/remove/disable/enable/move``, the admin API and the
console, so an operator reads the same answer whichever they use: ``added`` with
``alreadyPresent`` (a count) and ``ownedByOtherAccounts`` (each number with its owner's
accessKey); ``removed``/``disabled``/``enabled``/``moved`` with ``kept`` and ``notFound``. The
callers only decide how a refusal looks (an exit status, an HTTP status, a notice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .model import Account, Role, VirtualNumber
from .numbers import Number, parse_international
from .store import Store


class PoolRefusal(Exception):
    """A change refused before the store was touched (its message says why)."""


class Change(NamedTuple):
    """What a remove, disable, enable or move did: ``report`` is the JSON answer, keyed as
    the CLI prints it; ``done`` is the key of the numbers it changed."""

    verb: str
    done: str
    report: dict[str, Any]

    @property
    def kept(self) -> list[str]:
        kept: list[str] = self.report.get("kept", [])
        return kept

    @property
    def not_found(self) -> list[str]:
        missing: list[str] = self.report["notFound"]
        return missing

    @property
    def nothing_found(self) -> bool:
        """None of the numbers exists: the operator mistyped, and must be told, never
        answered as if something was done."""
        return not self.report[self.done] and not self.kept

    def kept_message(self) -> str:
        return (f"{len(self.kept)} number(s) have active bindings and were kept: "
                f"{', '.join(self.kept[:10])} (use --force to end their bindings)")

    def nothing_message(self) -> str:
        return f"nothing to {self.verb}: no such number(s): {', '.join(self.not_found[:10])}"


def as_digits(texts: Iterable[str]) -> list[str]:
    """Numbers as the store keeps them (digits with the country code), each once; text that
    is not a number is kept as given, so it is reported as not found rather than dropped."""
    out = []
    for text in texts:
        number = parse_international(text)
        out.append(number.digits if number is not None else text)
    return list(dict.fromkeys(out))


def parse_for_add(texts: Sequence[str]) -> list[Number]:
    """Every text as an international number; one that is not refuses the whole list, so a
    typo never leaves a half-imported file behind."""
    parsed = [parse_international(text) for text in texts]
    bad = [text for text, n in zip(texts, parsed, strict=True) if n is None]
    if bad:
        raise PoolRefusal(
            f"{len(bad)} not possible international number(s) (country code first), e.g. "
            f"{', '.join(bad[:5])}; nothing was added")
    return [n for n in parsed if n is not None]


def ownership_refusal(owner: Account) -> str | None:
    """Why ``owner`` cannot own numbers, or None when it can (a customer account)."""
    if owner.role is Role.CUSTOMER:
        return None
    return (f"{owner.access_key} is a {owner.role.value} account: only customer accounts "
            "own virtual numbers")


async def add_numbers(store: Store, owner: Account, numbers: Sequence[Number], batch: int = 1000,
                      advance: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Give ``numbers`` to ``owner`` in batches: how many were added, how many the account
    had already, and which belong to another account (named by its accessKey, so the
    operator knows whom to ask). After adding any, the store refreshes its planner
    statistics: a bulk add otherwise leaves PostgreSQL planning against a pool it thinks is
    empty. ``advance`` is told each batch's size (the CLI's progress bar)."""
    refusal = ownership_refusal(owner)
    if refusal is not None:
        raise PoolRefusal(refusal)
    records = list({n.digits: VirtualNumber(n.digits, owner.id, n.country_code)
                    for n in numbers}.values())
    existing: list[str] = []
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        existing += await store.add_numbers(chunk)
        if advance is not None:
            advance(len(chunk))
    if len(records) > len(existing):
        await store.refresh_statistics()
    owners = await store.number_owners(existing) if existing else {}
    keys = {a.id: a.access_key for a in await store.list_accounts()} if existing else {}
    others = [{"number": x, "account": keys.get(owners[x], str(owners[x]))}
              for x in existing if x in owners and owners[x] != owner.id]
    return {"added": len(records) - len(existing),
            "alreadyPresent": len(existing) - len(others), "ownedByOtherAccounts": others}


def owned_by_others_message(report: dict[str, Any]) -> str:
    others = report["ownedByOtherAccounts"]
    named = ", ".join(f"{o['number']} (account {o['account']})" for o in others[:10])
    return (f"{len(others)} number(s) belong to another account and were not added: {named}; "
            "`pns numbers move NUMBER --to ACCOUNT` gives a number to another account")


async def remove_numbers(store: Store, texts: Iterable[str], force: bool, now: int) -> Change:
    """Remove the numbers that exist; one with active bindings is kept unless ``force``."""
    xs = as_digits(texts)
    found = await store.number_owners(xs)
    present = [x for x in xs if x in found]
    kept = await store.remove_numbers(present, force, now) if present else []
    return Change("remove", "removed", {
        "removed": [x for x in present if x not in kept], "kept": kept,
        "notFound": [x for x in xs if x not in found]})


async def set_numbers_enabled(store: Store, texts: Iterable[str], enabled: bool) -> Change:
    """Enable or disable the numbers that exist (a disabled one gets no new bindings)."""
    xs = as_digits(texts)
    missing = await store.set_numbers_enabled(xs, enabled) if xs else []
    done = "enabled" if enabled else "disabled"
    return Change("enable" if enabled else "disable", done, {
        done: [x for x in xs if x not in missing], "notFound": missing})


async def move_numbers(store: Store, texts: Iterable[str], target: Account, force: bool,
                       now: int) -> Change:
    """Give the numbers that exist to ``target``; one with active bindings is kept unless
    ``force``, which ends them (a binding never changes account)."""
    refusal = ownership_refusal(target)
    if refusal is not None:
        raise PoolRefusal(refusal)
    xs = as_digits(texts)
    found = await store.number_owners(xs)
    present = [x for x in xs if x in found]
    kept = await store.move_numbers(present, target.id, force, now) if present else []
    return Change("move", "moved", {
        "moved": [x for x in present if x not in kept], "to": target.access_key, "kept": kept,
        "notFound": [x for x in xs if x not in found]})
