"""Coupon codes: readable alphabet, check character, and enough randomness."""

from __future__ import annotations

import math
from collections import Counter

from coupons import codes


def test_alphabet_has_32_letters_without_look_alikes():
    assert len(set(codes.ALPHABET)) == 32
    assert not set(codes.ALPHABET) & set("01IO")


def test_generated_codes_are_well_formed_and_distinct():
    batch = codes.generate_codes(20_000)
    assert len(set(batch)) == len(batch)
    assert all(len(c) == codes.CODE_LENGTH and codes.is_well_formed(c) for c in batch)


def test_single_codes_are_well_formed_evenly_spread_and_distinct():
    # The claim's one-at-a-time path, held to what the batch path is held to above and below.
    single = [codes.generate_code() for _ in range(8_000)]
    assert len(set(single)) == len(single)
    assert all(len(c) == codes.CODE_LENGTH and codes.is_well_formed(c) for c in single)
    counts = Counter("".join(c[: codes.BODY_LENGTH] for c in single))
    expected = 8_000 * codes.BODY_LENGTH / 32
    assert sum((counts[letter] - expected) ** 2 / expected for letter in codes.ALPHABET) < 70


def test_every_single_mistyped_character_is_caught_by_the_check_character():
    for code in codes.generate_codes(200):
        for position in range(len(code)):
            for letter in codes.ALPHABET:
                if letter != code[position]:
                    typo = code[:position] + letter + code[position + 1 :]
                    assert not codes.is_well_formed(typo), (code, typo)


def test_swapping_two_neighbouring_characters_is_almost_always_caught():
    caught = total = 0
    for code in codes.generate_codes(500):
        for i in range(len(code) - 1):
            if code[i] != code[i + 1]:
                total += 1
                caught += not codes.is_well_formed(code[:i] + code[i + 1] + code[i] + code[i + 2 :])
    assert caught / total > 0.95


def test_letters_are_spread_evenly_so_no_position_leaks_guesses():
    counts = Counter("".join(c[: codes.BODY_LENGTH] for c in codes.generate_codes(8_000)))
    expected = 8_000 * codes.BODY_LENGTH / 32
    chi2 = sum((counts[letter] - expected) ** 2 / expected for letter in codes.ALPHABET)
    assert chi2 < 70  # 31 degrees of freedom: p < 0.0002 for a fair generator to exceed this
    assert codes.BODY_LENGTH * math.log2(32) >= 60


def test_normalize_accepts_the_printed_form_in_any_case():
    code = codes.generate_code()
    assert codes.normalize(f" {codes.display(code).lower()} ") == code
