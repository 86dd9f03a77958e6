import pytest

from lowbit import dispatch, registry


@pytest.fixture(autouse=True)
def _fresh_dispatch(monkeypatch):
    """Each test starts with no run-time backends, no env overrides and no cached decisions."""
    monkeypatch.delenv(dispatch.ENV_BACKEND, raising=False)
    monkeypatch.delenv(dispatch.ENV_STRICT, raising=False)
    dispatch.clear_cache()
    yield
    for name in list(registry._registered):
        registry.unregister(name)
    dispatch.clear_cache()
