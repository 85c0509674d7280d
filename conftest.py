"""Fixture modules, one per area (each owned by that area's tests)."""

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.demo",
    "tests.fixtures.app",
    "tests.fixtures.auth",
    "tests.fixtures.obs",
    "tests.fixtures.markers",
    "tests.fixtures.redis",
    "tests.fixtures.scaleout",
]
