"""A harness to reproduce and extend the degradation study of He et al. (arXiv 1512.03385,
1603.05027): plain and residual nets, trained by a Hydra sweep, tracked in MLflow, drawn as
the paper's figures."""

import os
import sys

# torch's CPU threads are libgomp's. A libgomp thread that waits for work spins on its core for
# GOMP_SPINCOUNT loops (300,000 unless set) before it sleeps. Alone on the machine that spin
# saves a wake-up; beside another busy process it holds a core that the other needs, and both
# slow down far beyond their fair share: 10x instead of 2x beside one copy (docs/performance.md,
# "OpenMP spin on a shared machine"). A short spin keeps the speed alone and the fair share beside others, and
# it changes no number: the threads do the same sums, only their waiting differs. libgomp reads
# the variables once, when torch loads it, so they are set here, before any harness module
# imports torch; a setting of the user's own wins.
OPENMP_SPIN_COUNT = "1000"
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _openmp_wait() -> str:
    """How torch's threads wait in this process, as its runs record it (the tag `openmp_wait`)."""
    if "torch" in sys.modules:
        return "unknown: torch was loaded before the harness"
    if not set(OPENMP_WAIT_VARIABLES) & os.environ.keys():
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    return " ".join(f"{key}={os.environ[key]}" for key in OPENMP_WAIT_VARIABLES if key in os.environ)


OPENMP_WAIT = _openmp_wait()
