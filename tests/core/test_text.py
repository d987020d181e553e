"""Client text in messages: bounded, and quoted short."""

from __future__ import annotations

import pytest

from service.core.errors import InvalidRequest
from service.core.text import MAX_NAME_CHARS, check_length, listed, shown


def test_shown_quotes_short_text_whole_and_cuts_long_text_saying_its_length():
    assert shown("layer4") == "'layer4'"
    long = shown("a" * 19_000_000, limit=10)
    assert long == "'aaaaaaaaaa'… (19,000,000 characters)"


def test_listed_cuts_each_name_and_the_count():
    assert listed(["pool", "x" * 100, "a", "b", "c", "d", "e"]) == (
        f"pool, {'x' * 40!r}… (100 characters), a, b, c and 2 more"
    )


def test_check_length_refuses_past_the_limit_with_a_short_quote():
    assert check_length("layer name", "n" * MAX_NAME_CHARS) == "n" * MAX_NAME_CHARS
    with pytest.raises(InvalidRequest, match=r"layer name 'n+'… \(257 characters\) is longer than 256 characters"):
        check_length("layer name", "n" * (MAX_NAME_CHARS + 1))
