"""The deploy/ checks; the real-server tests use the fixtures of tests/integration."""

from integration.conftest import *  # noqa: F403
