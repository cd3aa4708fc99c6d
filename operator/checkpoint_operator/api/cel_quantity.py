"""The part of Kubernetes' CEL quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go, in
the API server's CEL environment since 1.28, so in every CRD rule of the Kubernetes versions the
chart supports, 1.29+) that the CRDs' rules use: `isQuantity(string)`, `quantity(string)`,
`<Quantity>.sign()` and `<Quantity>.isInteger()` (true when the value is a whole number that fits
an int64: `AsInt64` succeeds). Local mode's admission (local/admission.py) and the rule tests
(tests/unit/api/test_rules.py) register `FUNCTIONS` with the `cel` package, which has no such
library; a Quantity is a `{"quantity": text}` map there (the `cel` package has no opaque types).

Exact: the value is a Fraction (never a float), from Kubernetes' quantity grammar
(`<signedNumber><suffix>`: a binary suffix Ki..Ei, a decimal one n, u, m, k..E, or an exponent e/E
of a signed integer); a text longer than MAX_TEXT or an exponent beyond MAX_EXPONENT is no quantity
(Kubernetes refuses more than 10^18ish anyway), so the work stays bounded whatever the input.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Callable

INT64_MAX = 2 ** 63 - 1
MAX_TEXT = 128
MAX_EXPONENT = 64
_QUANTITY = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?")
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def value_of(text: str) -> Fraction | None:
    """The exact value of a Kubernetes quantity, None when `text` is not one."""
    match = _QUANTITY.fullmatch(text) if len(text) <= MAX_TEXT else None
    if match is None:
        return None
    sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
    whole, _, fraction = number.partition(".")
    value = Fraction(int(whole or "0") * 10 ** len(fraction) + int(fraction or "0"), 10 ** len(fraction))
    if suffix in _BINARY:
        value *= _BINARY[suffix]
    else:
        exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        if abs(exponent) > MAX_EXPONENT:
            return None
        value *= Fraction(10) ** exponent
    return -value if sign == "-" else value


def _value(quantity: Any) -> Fraction:
    value = value_of(str(quantity.get("quantity"))) if isinstance(quantity, dict) else None
    if value is None:
        raise ValueError(f"not a Quantity: {quantity!r}")
    return value


def is_quantity(text: Any) -> bool:
    return isinstance(text, str) and value_of(text) is not None


def quantity(text: Any) -> dict[str, str]:
    """As the library's quantity(): an error (the rule refuses) when the text is not a quantity."""
    if not is_quantity(text):
        raise ValueError(f"quantities must match the regular expression: {str(text)[:60]!r}")
    return {"quantity": text}


def sign(quantity_: Any) -> int:
    value = _value(quantity_)
    return (value > 0) - (value < 0)


def is_integer(quantity_: Any) -> bool:
    value = _value(quantity_)
    return value.denominator == 1 and -INT64_MAX - 1 <= value <= INT64_MAX


FUNCTIONS: dict[str, Callable[..., Any]] = {"isQuantity": is_quantity, "quantity": quantity, "sign": sign,
                                            "isInteger": is_integer}
