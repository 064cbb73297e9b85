"""Configs as `harness.run` takes them: its check of the overrides before Hydra composes anything, and a
composed config resolved into its job."""

import pytest

from harness import edge, identity
from harness.config import ConfigError, check_overrides
from harness.identity import Job


def check_refused(args: list[str], message: str | None) -> None:
    """`args` pass the check (message None), or are refused with a paragraph that says `message`."""
    if message is None:
        check_overrides(args)
        return
    with pytest.raises(ConfigError) as refused:
        check_overrides(args)
    assert message in str(refused.value)


def resolved(cfg) -> Job:
    """The job of a config as `harness.run` resolves it here: its threads and precision decided by
    this machine (harness.edge)."""
    return identity.resolve(cfg, edge.decide(cfg))
