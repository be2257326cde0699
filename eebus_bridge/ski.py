"""SKIs (subject key identifiers) name EEBUS peers by their certificate.

Users paste them in many spellings ("AB:CD ...", upper case); the sidecar reports lower-case hex.
Comparing raw strings (as the reference module does) misses matches, so every SKI is normalised
once at the edge and compared normalised everywhere else.
"""

from __future__ import annotations

import re

SKI_HEX_LENGTH = 40
_SEPARATORS = re.compile(r"[\s:]")
_HEX40 = re.compile(r"[0-9a-f]{40}")


def normalize_ski(raw: str) -> str:
    """Lower-case the SKI and drop spaces and colons; does not check the result."""
    return _SEPARATORS.sub("", raw).lower()


def is_valid_ski(raw: str) -> bool:
    """True when raw is exactly 40 hex characters after normalisation."""
    return _HEX40.fullmatch(normalize_ski(raw)) is not None


def group_ski(ski: str) -> str:
    """ "0123 4567 …": groups of four, as energy managers' pairing screens show an SKI."""
    plain = normalize_ski(ski)
    return " ".join(plain[index : index + 4] for index in range(0, len(plain), 4))
