"""`python -m harness.run [-m] key=value ...`: train one net per config, one MLflow run each.

    python -m harness.run -m depth=20,56 residual=true,false

The command line only: a run's life is `harness.job`, which ends in an `Outcome`; this module
says it and chooses the command's exit. A sweep's callbacks are `harness.sweep`.
"""

import gc
import logging
import os
import sys
from dataclasses import replace

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness import config
from harness.errors import Ended, HarnessError, ends_the_command

config.register()
log = logging.getLogger("harness.job")  # a job's lines, under one name wherever they are said


def in_a_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def say(outcome, in_sweep: bool) -> None:
    """A job's last word. In a sweep an error is a logged line: the sweep's summary names the job."""
    from harness.job import ERROR, INFO, LOG, NOTE

    if outcome.said_as == INFO:
        log.info("%s", outcome.message)
    elif outcome.said_as == NOTE:
        print(outcome.message)
    elif outcome.said_as == LOG or (outcome.said_as == ERROR and in_sweep):
        log.error("%s", outcome.message)
    elif outcome.said_as == ERROR:
        print(f"error: {outcome.message}", file=sys.stderr)
    else:
        print(outcome.message, file=sys.stderr)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@ends_the_command
def main(cfg: DictConfig):
    """One job: alone, its outcome (harness.job.Outcome) ends the command with its exit code; in a
    sweep, the job's outcome is its return value (Hydra's JobReturn) and the sweep goes on, but for
    Ctrl-C."""
    config.check(cfg)
    # torch, MLflow and the run's modules (3 s) load once the config is checked: bad input is said
    # before. What is loaded by then (about a million objects) lives as long as the process: the
    # collector need never scan it again. Unfrozen, its full collections cost a default run about
    # 2 s, 1.5 s of them at exit (docs/performance.md, "Where a run's time goes").
    from harness import edge, identity, plan
    from harness.job import Kind, run_job
    from harness.launchers import orphaned

    gc.freeze()
    job = identity.resolve(cfg, edge.decide(cfg))
    if cfg.plan:  # a sweep's callback plans all its jobs before any starts, and stops the command
        return plan.show([job], None)
    in_sweep = in_a_sweep()
    if HydraConfig.initialized() and not in_sweep:  # a sweep's callback says these once for all its jobs
        for note in identity.unused_notes(job, list(HydraConfig.get().overrides.task)):
            print(note)
    outcome = run_job(job)
    if outcome.kind is Kind.CTRL_C and orphaned():  # the sweep that started this job is gone: so is the job
        os._exit(1)
    if outcome.kind is Kind.BAD_CONFIG:  # in a sweep too: its callback checked every job before any started
        raise HarnessError(outcome.message, code=outcome.exit_code)
    if in_sweep:
        if outcome.kind is Kind.CTRL_C:  # the sweep stops, and says what it stopped
            raise KeyboardInterrupt
        say(outcome, in_sweep)
        return replace(outcome, error=None)  # what a launcher sends back to the sweep must pickle
    if outcome.error is not None:  # a bug, alone: its traceback
        raise outcome.error
    say(outcome, in_sweep)
    if outcome.exit_code:
        raise Ended(code=outcome.exit_code)
    return outcome


def cli() -> None:
    """The command's one exit: bad input, a failed sweep and Ctrl-C end it with one paragraph
    each, never a traceback."""
    try:
        config.check_overrides(sys.argv[1:])
        main()
    except HarnessError as error:
        end(Ended(error))
    except Ended as ended:
        end(ended)
    except KeyboardInterrupt:
        hooks = getattr(sys.modules.get("harness.launchers"), "INTERRUPT_HOOKS", [])  # none before it loaded
        for hook in hooks:
            hook()
        if not hooks:
            print("stopped (Ctrl-C) before any run was opened", file=sys.stderr)
        sys.exit(130)


def end(ended: Ended) -> None:
    if ended.error is not None:
        print(f"error: {ended.error}", file=sys.stderr)
    sys.exit(ended.code)


if __name__ == "__main__":
    cli()
