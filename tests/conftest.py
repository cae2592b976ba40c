"""Test configuration: pytester drives the plugin as a user runs it."""

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items: list) -> None:
    """A safety net for the project's own tests (not for suites): a test that hangs fails
    after 15 minutes with every thread's stack (pytest-timeout) instead of stalling CI."""
    import pytest

    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(900))
