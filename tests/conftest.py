"""Test configuration: pytester drives the plugin as a user runs it."""

pytest_plugins = ["pytester"]
