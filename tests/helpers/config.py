"""Checking a command line's overrides as `harness.run` does before Hydra composes anything."""

import pytest

from harness.config import ConfigError, check_overrides


def check_refused(args: list[str], message: str | None) -> None:
    """`args` pass the check (message None), or are refused with a paragraph that says `message`."""
    if message is None:
        check_overrides(args)
        return
    with pytest.raises(ConfigError) as refused:
        check_overrides(args)
    assert message in str(refused.value)
