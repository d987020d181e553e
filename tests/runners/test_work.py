"""A batch's rows back to each request: its own rows and layers, or the error of its first bad image."""

from __future__ import annotations

import numpy as np

from service.core.errors import InvalidImage
from service.runners.work import Work, answers, rows_per_work


def test_each_work_gets_its_own_rows_of_its_own_layers():
    pixels = np.zeros((2, 2, 3), np.uint8)
    works = [Work((pixels,), ("a",)), Work((pixels, pixels), ("b", "a")), Work((pixels,), ("b",))]
    outputs = {"a": np.arange(4.0)[:, None], "b": -np.arange(4.0)[:, None]}
    rows = rows_per_work(works, outputs)
    assert [list(r) for r in rows] == [["a"], ["b", "a"], ["b"]]
    assert rows[0]["a"].ravel().tolist() == [0.0]
    assert rows[1]["a"].ravel().tolist() == [1.0, 2.0] and rows[1]["b"].ravel().tolist() == [-1.0, -2.0]
    assert rows[2]["b"].ravel().tolist() == [-3.0]


def test_a_failed_image_fails_its_own_work_only():
    pixels = np.zeros((2, 2, 3), np.uint8)
    works = [Work((pixels,), ("a",)), Work((pixels, pixels, pixels), ("a",)), Work((pixels,), ("a",))]
    first, second = InvalidImage("second image"), InvalidImage("third image")
    got = answers(works, {2: first, 3: second}, ["r0", "r1", "r2"])
    assert got == ["r0", first, "r2"]
