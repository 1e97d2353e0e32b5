"""Phone number normalisation: the one place that decides what a number is.

Numbers are stored and returned as digits with the country code and no ``+`` (``85211111114``),
as NXCloud does. ``phonenumbers`` finds the country code and checks that the length is possible;
a number is never refused only because it is unassigned in the real world.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import phonenumbers

from .errors import Code, PnsError

_STRIP = str.maketrans("", "", "+ -()\t")


class Number(NamedTuple):
    digits: str
    country_code: int


def _clean(raw: str) -> str:
    text = raw.strip()
    cleaned = text.translate(_STRIP)
    if cleaned.startswith("00"):
        cleaned = cleaned[2:]
    return cleaned


def parse_international(raw: str) -> Number | None:
    """The number read as international (country code first), or None when that is impossible."""
    found = _parse_international(raw)
    return None if found is None else Number(*found)


@lru_cache(maxsize=65536)
def _parse_international(raw: str) -> tuple[str, int] | None:
    """Cached as a plain tuple: the garbage collector stops tracking a tuple of a str and an
    int, never a NamedTuple, and every full collection walked each cached ``Number`` (65,536
    of them once binds and callers have filled the cache: tens of milliseconds per pause)."""
    digits = _clean(raw)
    # ASCII only: str.isdigit() also passes full-width, Arabic-Indic and superscript digits,
    # which int() refuses (a traceback) or which would be stored as another party's number.
    if not digits.isascii() or not digits.isdigit() or not 4 <= len(digits) <= 17:
        return None
    fast = _parse_plain(digits)
    if fast is not None:
        return (fast.digits, fast.country_code)
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return (_e164_digits(parsed), int(parsed.country_code or 0))


def require_international(raw: str, field: str, missing: Code = Code.NUMBER_EMPTY) -> Number:
    """A party or virtual number given by a customer: it must carry its country code."""
    if not raw or not raw.strip():
        raise PnsError(missing, f"{field} is empty")
    number = parse_international(raw)
    if number is None:
        raise PnsError(Code.BAD_PARAMETER, f"{field} is not a possible international number")
    return number


@lru_cache(maxsize=262144)
def normalise_caller(raw: str, country_code: int) -> str | None:
    """The caller of a query, read against the dialled X's country.

    Tried as international first (accepted when possible and of X's country); otherwise read as
    a national number of X's region, trunk prefix dropped. None means no number of X's country
    can be read from it: such a caller cannot be a party of any binding on X.
    """
    number = parse_international(raw)
    if number is not None and number.country_code == country_code:
        return number.digits
    digits = _clean(raw)
    if not digits.isascii() or not digits.isdigit():
        return None
    region = phonenumbers.region_code_for_country_code(country_code)
    if region == "ZZ":
        return None
    try:
        parsed = phonenumbers.parse(digits, region)
    except phonenumbers.NumberParseException:
        return None
    if parsed.country_code != country_code or not phonenumbers.is_possible_number(parsed):
        return None
    return _e164_digits(parsed)


def _national_prefix_pattern(country_code: int) -> re.Pattern[str] | None:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region, None)
    if metadata is None:
        return None
    pattern = metadata.national_prefix_for_parsing or metadata.national_prefix
    return re.compile(pattern) if pattern else re.compile(r"(?!)")


_PREFIX_PATTERNS: dict[int, re.Pattern[str] | None] = {}


def _parse_plain(digits: str) -> Number | None:
    """The common case without ``phonenumbers.parse`` (10x cheaper; binds parse two new
    numbers each): a known country code followed by a national number that needs no prefix
    stripping and has no leading zero. Anything else takes the full parser, so the result is
    always the same as the full parser's (tests/test_numbers.py checks that)."""
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[length:]
    if not national or national[0] == "0":
        return None
    if country_code not in _PREFIX_PATTERNS:
        _PREFIX_PATTERNS[country_code] = _national_prefix_pattern(country_code)
    pattern = _PREFIX_PATTERNS[country_code]
    if pattern is None or pattern.match(national):
        return None
    candidate = phonenumbers.PhoneNumber(country_code=country_code,
                                         national_number=int(national))
    if not phonenumbers.is_possible_number(candidate):
        return None
    return Number(digits, country_code)


def _e164_digits(parsed: phonenumbers.PhoneNumber) -> str:
    # E.164 keeps a national leading zero where the country needs one (Italy), unlike
    # country_code + national_number.
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))[1:]


def country_of(digits: str) -> int:
    """Country code of a stored (already normalised) number."""
    number = parse_international(digits)
    if number is None:
        raise PnsError(Code.NO_COUNTRY_PREFIX, f"{digits} has no country prefix")
    return number.country_code



def region_country_code(iso2: str) -> int:
    """The country code of an ISO-3166 alpha-2 region (v1's ``iso2X``, e.g. ``HK`` → 852);
    1002 when it is not one."""
    region = iso2.strip().upper()
    code = 0
    if len(region) == 2 and region.isascii() and region.isalpha():
        code = int(phonenumbers.country_code_for_region(region))
    if not code:
        raise PnsError(Code.BAD_PARAMETER, f"iso2X: unknown region {iso2[:8]!r}")
    return code
