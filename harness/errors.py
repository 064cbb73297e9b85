"""The harness's one error type, and how a command ends on it.

Anything the user can act on (a bad value, a store that cannot be reached, a sweep that did not
finish) is raised as a `HarnessError` whose text is the one paragraph the user reads. Only a
command's `main` turns it into `error: ...` on stderr and its exit code. Hydra stands between
the two: it turns an exception in a callback into a warning and goes on, and one in a task into
a traceback. So where Hydra calls the harness (`ends_the_command`), the error travels on as
`Ended`, which Hydra lets pass, as it lets SystemExit pass.
"""

import functools


class HarnessError(Exception):
    """A failure the user can act on: its text names the bad value and what would be valid;
    `code` is the command's exit code (2: bad input, before any work; 1: work that failed)."""

    code = 2

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class Ended(BaseException):
    """The command ends here: with `error`, or without one (`code` 0: a plan was all it asked
    for; or the exit code of a job whose outcome was said already)."""

    def __init__(self, error: HarnessError | None = None, code: int | None = None):
        super().__init__(str(error) if error else "")
        self.error = error
        self.code = error.code if error is not None else (code or 0)


def ends_the_command(function):
    """For the functions that Hydra calls: a HarnessError they raise ends the command."""

    @functools.wraps(function)
    def called_by_hydra(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except HarnessError as error:
            raise Ended(error) from error

    return called_by_hydra
