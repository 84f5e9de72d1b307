"""Attacks on a real server: the fixtures of tests/integration (real `engramdb serve` subprocesses)."""

from integration.conftest import *  # noqa: F403
