"""Fixtures the frozen agent's tests share with the integration tests."""

from tests.integration.test_tray import x_server

__all__ = ["x_server"]
