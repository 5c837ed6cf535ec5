from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _fresh_test_broker() -> None:
    """Shadows tests/conftest.py's autouse Redis flush: the fakes need no Redis, and flushing the
    shared test broker from here would wipe the queues of a test run going on beside them."""
