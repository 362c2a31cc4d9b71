"""Kubernetes resource quantities ("500m", "64Gi", "1e3") as exact decimals.

The grammar the API server accepts. ``kubernetes.utils.parse_quantity`` gives the same value
for each of those (a unit test holds the two equal) but also takes what the server refuses
(``"1 Gi"``). The training pod validates its run config with this module: its image has no
Kubernetes client library.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -3, "u": -2, "m": -1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """The value of ``quantity``; :class:`ValueError` if it is not a Kubernetes quantity."""
    if isinstance(quantity, int | float | Decimal) and not isinstance(quantity, bool):
        return Decimal(quantity)
    match = _QUANTITY.match(str(quantity))
    if not match:
        raise ValueError(f"Invalid quantity: {quantity!r}")
    number, suffix = match.groups()
    if suffix and re.search("[eE]", number):  # "1e3k" is not a quantity
        raise ValueError(f"Invalid quantity: {quantity!r}")
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid quantity: {quantity!r}") from None
    if suffix in _BINARY:
        return value * Decimal(1024) ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * Decimal(1000) ** _DECIMAL[suffix]
    return value
