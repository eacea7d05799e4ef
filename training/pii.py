"""A PII scanner for training sets and model artifacts: emails, phones, cards, addresses.

Order PII (email, shipping address) lands only in ``pii/customers``; this scan
proves it stayed there. It looks at every distinct value of every text column
(and of integer columns, for card numbers), so a set with millions of rows but
thousands of ids is scanned in milliseconds. Card numbers must also pass the
Luhn check, which keeps long ids and timestamps from being flagged.

>>> [f.kind for f in scan_text("mail olivia.smith@example.com or call +1 (415) 555-0134")]
['email', 'phone']
>>> [f.kind for f in scan_text("card 4111 1111 1111 1111, ship to 12 Maple Ave")]
['card_number', 'street_address']
>>> scan_text("u-000042 bought monstera-deliciosa-6in for 24.99 at 2026-11-20T10:00:00Z")
[]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import pandas as pd

_EMAIL: Final = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# NANP and international forms with separators; a bare digit run is not a phone
_PHONE: Final = re.compile(
    r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-])"
    r"|(?<![\w+])\+\d{1,3}(?:[ .-]\d{1,5}){2,5}(?![\w-])"  # international, with separators
)
# Not after a decimal point: the digits of a float (0.12345678901234565 in a metrics
# or profile artifact) are no card number, and about one run in ten passes Luhn.
_CARD: Final = re.compile(r"(?<!\d)(?<!\d\.)(?:\d[ -]?){12,18}\d(?!\d)(?!\.\d)")
_STREET_SUFFIXES: Final = (
    "St|Street|Ave|Avenue|Rd|Road|Ln|Lane|Way|Dr|Drive|Ct|Court|Blvd|Boulevard|Pl|Place|Ter"
    "|Terrace|Hwy|Highway|Pkwy|Parkway"
)
_STREET: Final = re.compile(rf"\b\d{{1,6}}\s+(?:[A-Z][a-z]+\s+){{1,3}}(?:{_STREET_SUFFIXES})\b\.?")
_PATTERNS: Final = (
    ("email", _EMAIL),
    ("phone", _PHONE),
    ("card_number", _CARD),
    ("street_address", _STREET),
)


@dataclass(frozen=True, slots=True)
class PiiFinding:
    kind: str
    where: str  # column name or artifact path
    sample: str  # masked, so the report itself leaks nothing

    def __str__(self) -> str:
        return f"{self.kind} in {self.where} ({self.sample})"


def luhn_valid(digits: str) -> bool:
    """The payment-card checksum.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def mask(text: str) -> str:
    """Keep the first and last character: enough to find it, not enough to leak it.

    >>> mask("olivia@example.com")
    'o****************m'
    """
    return text if len(text) <= 2 else text[0] + "*" * (len(text) - 2) + text[-1]


def scan_text(text: str, where: str = "text") -> list[PiiFinding]:
    found = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            value = match.group(0)
            if kind == "card_number" and not luhn_valid(re.sub(r"\D", "", value)):
                continue
            found.append(PiiFinding(kind, where, mask(value)))
    return found


def scan_values(values: Iterable[object], where: str) -> list[PiiFinding]:
    """Findings in any of ``values`` (strings, and integers long enough to be cards)."""
    found: list[PiiFinding] = []
    for value in values:
        if isinstance(value, str):
            found += scan_text(value, where)
        elif isinstance(value, int) and value >= 10**12 and luhn_valid(str(value)):
            found.append(PiiFinding("card_number", where, mask(str(value))))
    return found


def scan_frame(frame: pd.DataFrame, limit: int = 20) -> list[PiiFinding]:
    """Findings in the distinct values of each text and integer column; at most ``limit``."""
    found: list[PiiFinding] = []
    for column in frame.columns:
        series = frame[column]
        if series.dtype == object or pd.api.types.is_string_dtype(series):
            values = series.dropna().unique().tolist()
        elif pd.api.types.is_integer_dtype(series):
            values = [int(v) for v in series.unique() if v >= 10**12]
        else:
            continue
        found += scan_values(values, str(column))
        if len(found) >= limit:
            return found[:limit]
    return found
