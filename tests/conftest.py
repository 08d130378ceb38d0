"""Shared pytest configuration: service fixtures live in tests/fixtures/."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.s3",
    "tests.fixtures.mongo",
    "tests.fixtures.fault_proxy",
    "tests.state_fixture",  # the `ws` fixture: version 1 of tests/supervised_flow.py has run
]

# In CI (CI set), a test that needs an optional tool fails instead of skipping.
REQUIRE_TOOLS = bool(os.environ.get("CI")) or bool(os.environ.get("STREAMFORGE_REQUIRE_TOOLS"))


@pytest.fixture(autouse=True)
def _no_leftover_supervisors() -> Iterator[None]:
    """A test that fails before stopping its supervisor must not leave it running."""
    yield
    from tests.supervisor_harness import kill_leftovers

    kill_leftovers()
