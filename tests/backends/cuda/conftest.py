import pytest


@pytest.fixture(scope="module")
def big_inputs():
    """The cache of big_spicy (tests/oracles.py), one per test module: the large spicy tensors are
    made once per dtype and sliced by the tests."""
    return {}
