"""Number normalisation: what a number is, in one place."""

from __future__ import annotations

import pytest

from pns.errors import Code, PnsError
from pns.numbers import normalise_caller, parse_international, require_international


@pytest.mark.parametrize(("raw", "digits", "cc"), [
    ("85211111114", "85211111114", 852),
    ("+852 1111-1114", "85211111114", 852),
    ("00852 (1111) 1114", "85211111114", 852),
    ("447401264117", "447401264117", 44),
    ("12025550123", "12025550123", 1),
    ("390612345678", "390612345678", 39),  # Italy keeps its national leading zero
])
def test_international(raw: str, digits: str, cc: int) -> None:
    number = parse_international(raw)
    assert number is not None
    assert (number.digits, number.country_code) == (digits, cc)


@pytest.mark.parametrize("raw", ["", "12", "abc", "+", "8521111111111111111", "85212"])
def test_impossible(raw: str) -> None:
    assert parse_international(raw) is None


@pytest.mark.parametrize(("raw", "cc", "expected"), [
    ("85222222222", 852, "85222222222"),
    ("22222222", 852, "85222222222"),          # national, HK has no trunk prefix
    ("07401264117", 44, "447401264117"),       # UK trunk prefix dropped
    ("+44 7401 264117", 44, "447401264117"),
    ("anonymous", 852, None),
    ("12", 852, None),
])
def test_caller(raw: str, cc: int, expected: str | None) -> None:
    assert normalise_caller(raw, cc) == expected


def test_require_international_codes() -> None:
    with pytest.raises(PnsError) as err:
        require_international("  ", "phoneA")
    assert err.value.code is Code.NUMBER_EMPTY
    with pytest.raises(PnsError) as err:
        require_international("12", "phoneA")
    assert err.value.code is Code.BAD_PARAMETER
