"""Coupon codes: unguessable, easy to read aloud and type, with a check character.

A code is 12 random characters from a 32-letter alphabet without the look-alikes 0/O, 1/I
(60 bits: guessing one live code among a million takes about 2^40 tries) and one Luhn mod N
check character (https://en.wikipedia.org/wiki/Luhn_mod_N_algorithm), which catches every
single mistyped character and most swaps before the database is asked. Stored without
separators; shown as `ABCD-EFGH-JKMN-P`.
"""

from __future__ import annotations

import secrets

import numpy as np

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
N = len(ALPHABET)
BODY_LENGTH = 12
CODE_LENGTH = BODY_LENGTH + 1
_INDEX = {c: i for i, c in enumerate(ALPHABET)}


_ALPHABET_BYTES = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)
# Luhn weights of the body, right to left starting with 2 (the check character sits at the right).
_WEIGHTS = np.array([2 if (BODY_LENGTH - 1 - i) % 2 == 0 else 1 for i in range(BODY_LENGTH)], dtype=np.int64)


def _check_char(values: list[int]) -> str:
    total = 0
    for i, v in enumerate(values):
        addend = v * int(_WEIGHTS[i])
        total += addend // N + addend % N
    return ALPHABET[(N - total % N) % N]


def generate_codes(count: int) -> list[str]:
    """`count` fresh random codes (uniqueness against the table is the database's job)."""
    if count <= 0:
        return []
    # 256 is a multiple of 32, so masking random bytes keeps every letter equally likely.
    raw = np.frombuffer(secrets.token_bytes(count * BODY_LENGTH), dtype=np.uint8).reshape(count, BODY_LENGTH)
    values = (raw & (N - 1)).astype(np.int64)
    addends = values * _WEIGHTS
    totals = (addends // N + addends % N).sum(axis=1)
    checks = (N - totals % N) % N
    letters = np.concatenate([values, checks[:, None]], axis=1)
    chars = _ALPHABET_BYTES[letters].tobytes().decode()
    return [chars[i : i + CODE_LENGTH] for i in range(0, count * CODE_LENGTH, CODE_LENGTH)]


def generate_code() -> str:
    """One fresh code; plain Python, cheaper than the vectorised path for a single claim."""
    values = [b & (N - 1) for b in secrets.token_bytes(BODY_LENGTH)]
    return "".join(ALPHABET[v] for v in values) + _check_char(values)


def normalize(text: str) -> str:
    """What a person typed, as stored: upper case, without spaces or dashes."""
    return "".join(ch for ch in str(text).upper() if ch.isalnum())


def is_well_formed(code: str) -> bool:
    """True when `code` (normalized) has the right length, alphabet and check character."""
    if len(code) != CODE_LENGTH or any(ch not in _INDEX for ch in code):
        return False
    return _check_char([_INDEX[ch] for ch in code[:BODY_LENGTH]]) == code[BODY_LENGTH]


def display(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def mask_code(code: str) -> str:
    """`ABCD-EFGH-JKLM-N` -> `ABCD-****-****-N`: enough to tell codes apart, not to spend one."""
    return code[:4] + "".join("*" if c.isalnum() else c for c in code[4:-1]) + code[-1:]
