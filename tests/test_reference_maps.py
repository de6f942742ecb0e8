"""Every method's maps on fixed small models equal the stored reference.

The reference (``tests/data/reference_maps.npz``, written by ``tests/reference_maps.py``)
guards refactors: the code may be rearranged, the numbers may not move. Regenerate it only
for a deliberate change of a method's maps, and say why in the commit.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_maps import REFERENCE_FILE, entries

ENTRIES = entries()


def test_the_reference_has_every_entry():
    with np.load(REFERENCE_FILE) as stored:
        assert sorted(stored.files) == sorted(ENTRIES)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_maps_equal_the_reference(name):
    with np.load(REFERENCE_FILE) as stored:
        expected = stored[name]
    actual = np.asarray(ENTRIES[name](), dtype=np.float32)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=2e-5)
    assert np.abs(expected).max() > 0  # a reference with signal
