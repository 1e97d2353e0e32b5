"""Number normalisation: what a number is, in one place."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pns.errors import Code, PnsError
from pns.numbers import (
    _parse_plain,
    normalise_caller,
    parse_international,
    require_international,
)


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


@pytest.mark.parametrize("raw", ["", "12", "abc", "+", "8521111111111111111", "85212",
                                 # Digits that are not ASCII: full-width, superscript,
                                 # Arabic-Indic (str.isdigit() passes each of them).
                                 "\uff18\uff15\uff1221234567", "852\u00b21234567",
                                 "\u0668\u0665\u066221234567"])
def test_impossible(raw: str) -> None:
    assert parse_international(raw) is None


@pytest.mark.parametrize(("raw", "cc", "expected"), [
    ("85222222222", 852, "85222222222"),
    ("22222222", 852, "85222222222"),          # national, HK has no trunk prefix
    ("07401264117", 44, "447401264117"),       # UK trunk prefix dropped
    ("+44 7401 264117", 44, "447401264117"),
    ("anonymous", 852, None),
    ("12", 852, None),
    ("\uff18\uff15\uff1221234567", 852, None),
    ("852\u00b21234567", 852, None),
    ("\u00b21234567", 852, None),
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


@settings(max_examples=3000, deadline=None)
@given(cc=st.sampled_from(["1", "7", "33", "39", "44", "49", "52", "54", "55", "61", "81",
                           "86", "91", "852", "853", "886", "971", "380"]),
       rest=st.text("0123456789", min_size=1, max_size=13))
def test_fast_path_agrees_with_phonenumbers(cc: str, rest: str) -> None:
    """The cheap path must give exactly what the full parser gives."""
    digits = cc + rest
    try:
        parsed = phonenumbers.parse("+" + digits, None)
        possible = phonenumbers.is_possible_number(parsed)
    except phonenumbers.NumberParseException:
        possible = False
    fast = _parse_plain(digits)
    if fast is not None:
        assert possible
        assert fast.digits == phonenumbers.format_number(
            parsed, phonenumbers.PhoneNumberFormat.E164)[1:]
        assert fast.country_code == parsed.country_code
