"""The manual says what the code does (issue 38): every `python -m harness...` command that README.md,
docs/*.md and the comments of experiments/ and conf/ give runs, in a form that trains nothing, so that
a renamed key, config group or module fails the suite instead of a reader; every link between the
pages lands on a section; the suite selections the pages suggest keep the slow tests out; the
page's list of the keys outside a net's fingerprint is identity.py's; and what the pages quote of the
tests (runs a test sends, the longest slow tests), of the archives (runs and wall times, an order of
errors) and of the code (a printed line, the rule for config groups) is theirs (issue 46).

How each kind of command is checked, without training or starting anything, all in one process
(each start of torch, MLflow and Hydra costs seconds): the README's in the default run, every
page's with `-m slow`.

- `python -m harness.run ...`: the command itself, with `plan=true`, a temporary SQLite store and
  `schedule.iterations` just below `plan.CALIBRATED_FROM` added last. A sweep composes and checks
  every one of its jobs, plans them and stops before its parent run; a single run plans its net;
  neither stores anything, and below that many iterations a plan times no training steps (a study's
  own swept iterations, which the added ones hide, are checked on their own below). Commands that
  need what a test machine lacks are checked the same way, up to where they would need it: the
  Ray and SLURM launchers' configs are composed and neither is started (a cluster schedules those
  jobs: the plan gives no estimate); CIFAR-10 is downloaded by a run, never by a plan; a GPU study
  is planned on whatever device is here; `tracking=server` keeps its config group while the
  tracking.uri added last points the plan at the temporary store (no server runs here).
- every other module's command (archive, bench, plot, precision, server): its own argument parser
  parses the command's arguments and the command stops there (a bad flag or choice exits 2, as
  from the shell), so nothing is exported, imported, measured or started.
- a module named without arguments, as prose does (`python -m harness.server loads no torch`), and
  a synopsis (`python -m harness.run [-m] KEY=VALUE ...`): `--help`, which every module answers
  (harness.config has no parser: it prints docs/configuration.md, all it ever does).
"""

import ast
import datetime
import importlib.util
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# conf/experiment is a link to experiments/: each file once.
COMMENTED = sorted({p.resolve() for p in [*REPO.glob("experiments/*.yaml"), *REPO.glob("conf/**/*.yaml")]})
# Words the pages write where the reader puts their own value: each stands for a valid one.
PLACEHOLDERS = {
    "FOLDER": "an-archive",
    "RUN_ID": "0123456789abcdef0123456789abcdef",
    "HEAD": "127.0.0.1",  # a head node's address, as in tracking.uri=http://HEAD:5000
    "D": "20",  # depth=D
    "P": "fp32",  # precision=P, --precision P
}
# A command's shape rather than a command: the module is checked (`--help`), its arguments are not.
SYNOPSES = {"python -m harness.run [-m] KEY=VALUE ..."}
PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
SHELL_OPERATORS = set("();<>|&")


@dataclass(frozen=True)
class Command:
    where: str  # FILE:LINE
    module: str  # harness.run, or pytest for the suite selections
    args: tuple[str, ...]

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args if a not in ("-m", "--multirun")]

    def __str__(self) -> str:
        return f"{self.where}: python -m {self.module} {shlex.join(self.args)}"


def placeholder(token: str) -> str:
    return re.sub(r"(?<![\w.-])(" + "|".join(PLACEHOLDERS) + r")(?![\w-])", lambda m: PLACEHOLDERS[m.group(1)], token)


def shell_commands(text: str, where: str) -> list[Command]:
    """The `python -m MODULE ...` commands of one shell line: `&&`, `;` and `|` separate commands,
    `#` starts a comment, a redirection ends a command's arguments."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        tokens = list(lexer)
    except ValueError as error:  # an unclosed quote
        raise AssertionError(f"{where}: a command the shell cannot read: {text!r} ({error})") from None
    found, segment, redirected = [], [], False
    for token in [*tokens, ";"]:
        if not set(token) <= SHELL_OPERATORS:
            if not redirected:
                segment.append(token)
            continue
        if "<" in token or ">" in token:  # the file it reads or writes is no argument
            redirected = True
            continue
        if len(segment) >= 3 and PYTHON.match(segment[0]) and segment[1] == "-m":
            module, *args = segment[2:]
            if module.startswith("harness") or module == "pytest":
                found.append(Command(where, module, tuple(placeholder(a) for a in args)))
        segment, redirected = [], False
    return found


def code_spans(text: str) -> list[tuple[int, str]]:
    """(line, code) of each inline code span of a text with its fenced blocks blanked; a span may
    wrap onto the next line, never across a paragraph."""
    spans, line = [], 1
    for paragraph in re.split(r"(\n\s*\n)", text):
        for m in re.finditer(r"`([^`]+)`", paragraph):
            spans.append((line + paragraph[: m.start()].count("\n"), " ".join(m.group(1).split())))
        line += paragraph.count("\n")
    return spans


def starts_a_command(code: str) -> bool:
    words = code.split()
    return len(words) >= 3 and bool(PYTHON.match(words[0])) and words[1] == "-m"


def markdown_commands(path: Path) -> tuple[list[Command], list[str]]:
    """The commands of a page: each line of its ```bash blocks that runs `python -m` (alone or after
    `&&`), and each inline code span (also in a block without a language: a sweep's printed output)
    that starts with one; and the places that mention a command in neither form."""
    name = path.relative_to(REPO)
    commands, loose, prose, fence, logical, first = [], [], [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip().removeprefix("```")
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        for span in re.findall(r"`([^`]+)`", line):
            if starts_a_command(span):
                commands += shell_commands(span, f"{name}:{number}")
        if fence != "bash":  # the layout of the package, a sweep's output
            continue
        first = first or number
        logical += " " + line.rstrip().removesuffix("\\")
        if not line.rstrip().endswith("\\"):
            found = shell_commands(logical, f"{name}:{first}")
            if "-m harness" in logical and not any(c.module.startswith("harness") for c in found):
                loose.append(f"{name}:{first}: {logical.strip()}")
            commands += found
            logical, first = "", 0
    for number, code in code_spans("\n".join(prose)):
        if code in SYNOPSES:
            commands.append(Command(f"{name}:{number}", code.split()[2], ()))
        elif starts_a_command(code):
            commands += shell_commands(code, f"{name}:{number}")
        elif "-m harness" in code:
            loose.append(f"{name}:{number}: {code}")
    return commands, loose


def comment_commands(path: Path) -> tuple[list[Command], list[str]]:
    """The commands in a YAML file's comments: a comment that is a command line (`#   python -m ...`)
    or a code span in a comment; and the comments that mention a command in neither form."""
    name = path.relative_to(REPO.resolve())
    commands, loose = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "#" not in line:
            continue
        comment = line.split("#", 1)[1].strip()
        where = f"{name}:{number}"
        spans = [s for s in re.findall(r"`([^`]+)`", comment) if starts_a_command(s)]
        if starts_a_command(comment):
            commands += shell_commands(comment, where)
        elif spans:
            for span in spans:
                commands += shell_commands(span, where)
        elif "python -m" in comment:
            loose.append(f"{where}: {comment}")
    return commands, loose


def all_commands() -> list[Command]:
    commands = [c for page in DOCS for c in markdown_commands(page)[0]]
    for path in COMMENTED:
        commands += comment_commands(path)[0]
    return commands


def harness_commands() -> list[Command]:
    return [c for c in all_commands() if c.module != "pytest"]


def distinct(commands: list[Command]) -> list[Command]:
    """One of each (module, arguments), the first place that gives it."""
    first: dict[tuple, Command] = {}
    for command in commands:
        first.setdefault((command.module, command.args), command)
    return list(first.values())


# What the pages hold.


def test_the_pages_give_their_commands_in_a_form_this_test_reads():
    commands = harness_commands()
    modules = {c.module for c in commands}
    # The pages' commands, found: a reader that finds none checks nothing.
    assert len(commands) > 60 and {"harness.run", "harness.archive", "harness.bench", "harness.plot"} <= modules
    assert sum(c.module == "harness.run" and c.multirun for c in commands) > 25
    loose = [line for page in DOCS for line in markdown_commands(page)[1]]
    loose += [line for path in COMMENTED for line in comment_commands(path)[1]]
    assert not loose, "write these as `python -m MODULE ...`, in backticks or a line of their own:\n" + "\n".join(loose)
    unknown = [str(c) for c in commands if importlib.util.find_spec(c.module) is None]
    assert not unknown, "no such module:\n" + "\n".join(unknown)


def test_every_suite_selection_the_pages_suggest_keeps_the_slow_tests_out():
    """`-m EXPR` replaces the `-m 'not slow'` of pyproject's addopts (docs/testing.md): a selection
    that does not say `slow` brings the slow tests back."""
    selections = [c for c in all_commands() if c.module == "pytest" and "-m" in c.args]
    assert selections
    bad = [str(c) for c in selections if "slow" not in c.args[c.args.index("-m") + 1]]
    assert not bad, "add `and not slow` to:\n" + "\n".join(bad)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert not re.findall(r"-m '(?![^']*slow)[^']*'", pyproject), "pyproject's markers suggest a selection without slow"


# The studies' own sweeps: a command's values of a key win over its study's (Hydra's sweeper), so the
# iterations that how_to_run adds hide budget_curve's; here each study's swept values are checked as
# a command's values are.


def test_every_studys_swept_values_are_valid():
    from omegaconf import OmegaConf

    from harness import config

    swept = {}
    for path in sorted(REPO.glob("experiments/*.yaml")):
        params = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper.params") or {}
        swept[path.name] = [f"{key}={value}" for key, value in params.items()]
        config.check_overrides(swept[path.name])  # ConfigError: an unknown key or a value of the wrong type
    assert "schedule.iterations=500,1000,2000,4000" in swept["budget_curve.yaml"]


# Every command, run: in one process per group (each start of torch, MLflow and Hydra costs seconds).

DRIVER = r"""
import argparse, contextlib, io, json, runpy, sys, time, traceback
from hydra.core.global_hydra import GlobalHydra

commands, results_file = sys.argv[1:]

class Parsed(Exception):
    "The command's arguments parsed: the module would start its work here, and is stopped."

parse_args = argparse.ArgumentParser.parse_args

def parse_only(self, args=None, namespace=None):
    parse_args(self, args, namespace)  # a bad argument ends here: exit 2 and argparse's message
    raise Parsed

results = []
for module, argv, parse in json.loads(open(commands).read()):
    start = time.monotonic()
    argparse.ArgumentParser.parse_args = parse_only if parse else parse_args
    GlobalHydra.instance().clear()
    sys.argv = [module, *argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except Parsed:
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) or stop.code is None else 1
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code)
        except BaseException:
            code = 1
            traceback.print_exc()
    results.append([code or 0, out.getvalue()[-3000:], time.monotonic() - start])
open(results_file, "w").write(json.dumps(results))
"""


def how_to_run(command: Command, store: str) -> tuple[str, list[str], bool]:
    """(module, arguments, parse only) of a command in its form that trains nothing."""
    from harness import plan

    if not command.args:  # the module named, as prose names it
        return command.module, ["--help"], False
    if command.module == "harness.run":
        # plan=true: a sweep plans every job and stops before its parent run, a single run plans its
        # net; the tracking.uri, added last, wins over the command's own (a server nobody started
        # here); below plan.CALIBRATED_FROM iterations a plan estimates without training a few steps
        # of each net (seconds each, minutes for the command), and the command's own iterations are
        # still composed and checked on the way.
        iterations = f"schedule.iterations={plan.CALIBRATED_FROM - 1}"
        return command.module, [*command.args, "plan=true", f"tracking.uri={store}", iterations], False
    return command.module, list(command.args), True


@pytest.fixture
def precision_decided(tmp_path, monkeypatch):
    """What `precision=auto` is here, decided for the commands' processes in a cache of their own:
    the real measurement (harness.precision, tests/test_precision.py) takes 15 s to a minute, and
    the plans it would feed estimate nothing below plan.CALIBRATED_FROM iterations anyway."""
    from dataclasses import asdict

    from harness import precision
    from harness.device import device_name

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    precision.cache_file().parent.mkdir(parents=True)
    machine = device_name(torch.device("cpu"))
    precision.write_cache({machine: asdict(precision.choose(machine, fp32_ms=100.0, bf16_ms=1000.0))})


def your_own_module() -> tuple[str, str]:
    """(file name, code) of the module of your own that docs/studies.md writes ("A variant of your own")."""
    found = re.search(r"```python\n# (\w+\.py)[^\n]*\n(.*?)```", (REPO / "docs" / "studies.md").read_text(), re.S)
    return found.group(1), found.group(2)


def test_the_join_of_your_own_the_page_writes_is_the_one_the_tests_train():
    name, code = your_own_module()
    assert name == "my_joins.py" and code in (REPO / "tests" / "helpers" / "joins.py").read_text()


def run_documented(commands: list[Command], tmp_path: Path) -> None:
    """Run each command as how_to_run says, all in one process, in a launch directory that holds
    the page's module of your own; fail naming every one that failed."""
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    name, code = your_own_module()
    (tmp_path / name).write_text(code)
    planned = [how_to_run(c, store) for c in commands]
    (tmp_path / "commands.json").write_text(json.dumps(planned))
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "commands.json", "results.json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    failed = [
        f"{command}\n  ran as: python -m {module} {shlex.join(args)}\n  exit {code}:\n{output}"
        for command, (module, args, _), (code, output, _) in zip(commands, planned, results, strict=True)
        if code != 0
    ]
    for command, (_, _, seconds) in zip(commands, results, strict=True):
        print(f"{seconds:5.1f} s  {command}")
    assert not failed, "\n\n".join(failed)
    assert not (tmp_path / "mlruns").exists(), "a documented command stored something"


@pytest.mark.integration
def test_the_readmes_commands_run(tmp_path, precision_decided):
    """The README's own commands, each run as the module docstring says: the fast representative of
    the check below, which runs every page's."""
    readme = distinct([c for c in harness_commands() if c.where.startswith("README.md:")])
    assert {c.module for c in readme} >= {"harness.run", "harness.archive", "harness.bench", "harness.plot"}
    run_documented(readme, tmp_path)


@pytest.mark.slow
@pytest.mark.integration
def test_every_documented_command_runs(tmp_path, precision_decided):
    run_documented(distinct(harness_commands()), tmp_path)


# Links between the pages.


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def sections(page: Path) -> dict[str, int]:
    """anchor -> heading level of a page's headings (fenced blocks left out; repeats get -1, -2)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    found, seen = {}, {}
    for m in re.finditer(r"^(#{1,6})\s+(.*?)\s*#*\s*$", text, flags=re.M):
        anchor = github_anchor(m.group(2))
        repeat = seen.get(anchor, 0)
        seen[anchor] = repeat + 1
        found[anchor if not repeat else f"{anchor}-{repeat}"] = len(m.group(1))
    return found


def test_every_link_between_the_pages_lands_on_a_section():
    bad = []
    for page in DOCS:
        text = page.read_text()
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            where = f"{page.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}: {target}"
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                bad.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md":
                found = sections(linked)
                if anchor not in found:
                    bad.append(f"{where}: no such section")
                elif found[anchor] == 1:
                    bad.append(f"{where}: the page's title, not a section")
    assert not bad, "\n".join(bad)


# A section named in a comment or a message, `docs/PAGE.md, "Its heading"`, is a section of that page.
POINTER = re.compile(r"((?:docs/)?\w+\.md),? (?:\"([^\"]+)\"|'([^']+)')")


def test_every_section_the_code_and_the_configs_point_to_is_there():
    bad, found = [], 0
    for path in sorted({*REPO.glob("harness/**/*.py"), *REPO.glob("conf/**/*.yaml"), *REPO.glob("experiments/*.yaml")}):
        text = re.sub(r"\n\s*#\s*", " ", path.read_text())  # a pointer may wrap onto the next comment line
        for m in POINTER.finditer(text):
            page = REPO / (m.group(1) if "/" in m.group(1) or m.group(1) == "README.md" else f"docs/{m.group(1)}")
            title = m.group(2) or m.group(3)
            found += 1
            if not page.exists() or github_anchor(title) not in sections(page):
                bad.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert found > 5 and not bad, "no such section:\n" + "\n".join(bad)


# What the pages list of the code.


def backticked(text: str) -> set[str]:
    return {name.removesuffix(".*") for name in re.findall(r"`([^`]+)`", text)}


def test_the_keys_outside_the_fingerprint_and_the_recipe_are_identitys():
    from harness import identity

    page = " ".join((REPO / "docs" / "studies.md").read_text().split())
    outside = re.search(r"less where and how it ran: (.*?)`harness/identity.py` computes it", page)
    nets = re.search(r"less the net's own \((.*?); also `harness/identity.py`\)", page)
    assert outside and nets, "docs/studies.md no longer lists the keys outside the fingerprint and the recipe"
    assert backticked(outside.group(1)) == set(identity.PRESENTATION_KEYS)
    assert backticked(nets.group(1)) == set(identity.NET_KEYS)


# What the pages say of the tests, the archives and the code: each number checked against where it
# comes from (issue 46 found ten that had drifted from it).


def prose(path: Path) -> str:
    """A page's text, or a YAML file's comments, as one line: a phrase may wrap anywhere."""
    return " ".join(re.sub(r"\n\s*#", " ", path.read_text()).split())


def said(path: Path, pattern: str) -> re.Match:
    found = re.search(pattern, prose(path))
    assert found, f"{path.relative_to(REPO)} no longer says {pattern!r}: update this test with it"
    return found


def defined_test(file: str, name: str) -> ast.FunctionDef:
    (function,) = [n for n in ast.parse((REPO / "tests" / file).read_text()).body if getattr(n, "name", "") == name]
    return function


def checked_runs(file: str, test: str) -> int:
    """How many runs a test's sweep makes: the count it gives check_sweep."""
    calls = ast.walk(defined_test(file, test))
    (call,) = [c for c in calls if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "check_sweep"]
    return ast.literal_eval(call.args[1])


# Where a page says how many runs a test sends: the test (file, name), the page and its words.
SLURM_SWEEP = ("test_cluster.py", "test_slurm_runs_a_sweep_through_sbatch")
JOBLIB_INTO_SQLITE = ("test_launchers.py", "test_joblib_runs_jobs_at_once_into_sqlite")
RUNS_A_TEST_SENDS = [
    (SLURM_SWEEP, "docs/clusters.md", r"a CPU partition: (\d+) runs through `sbatch`"),
    (SLURM_SWEEP, "docs/testing.md", r"and munged\): (\d+) runs through `sbatch`"),
    (JOBLIB_INTO_SQLITE, "docs/clusters.md", r"a test runs (\d+) jobs at once into it"),
    (JOBLIB_INTO_SQLITE, "docs/testing.md", r"a test that runs (\d+) jobs at once into one SQLite store"),
]


@pytest.mark.parametrize("test, page, words", RUNS_A_TEST_SENDS, ids=[f"{p}-{t[1]}" for t, p, _ in RUNS_A_TEST_SENDS])
def test_the_runs_a_page_says_a_test_sends_are_the_tests(test, page, words):
    assert int(said(REPO / page, words).group(1)) == checked_runs(*test), f"{page} against {'::'.join(test)}"


def minutes(text: str) -> tuple[float, float] | None:
    """The first duration a text gives, as (shortest, longest) minutes: "4 minutes", "1.5 to 2.5 minutes"."""
    found = re.search(r"(\d+(?:\.\d+)?)(?: to (\d+(?:\.\d+)?))? minutes", text)
    return (float(found.group(1)), float(found.group(2) or found.group(1))) if found else None


def slow_test_durations() -> dict[str, tuple[float, float]]:
    """Each slow test whose duration its marker's comment or its docstring gives."""
    durations = {}
    for path in sorted((REPO / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for node in ast.parse("\n".join(lines)).body:
            slow = [d for d in getattr(node, "decorator_list", []) if ast.unparse(d) == "pytest.mark.slow"]
            if slow:
                comment = lines[slow[0].lineno - 1].partition("#")[2]
                duration = minutes(comment) or minutes(ast.get_docstring(node) or "")
                if duration:
                    durations[f"{path.name}::{node.name}"] = duration
    return durations


def test_the_longest_slow_tests_the_page_names_are_the_longest():
    """docs/testing.md's longest slow tests, by the durations their markers or docstrings give: every
    slow test as long as the shortest it names is named."""
    longest = said(REPO / "docs" / "testing.md", r"The longest are (.*?)\.(?:\s|$)").group(1)
    named = {minutes(part) for part in re.split(r"\), | and the ", longest)} - {None}
    shortest = min(most for _, most in named)
    durations = slow_test_durations()
    assert len(durations) >= 5, "the slow tests no longer say how long they take: this test checks nothing"
    long_ones = {test: d for test, d in durations.items() if d[1] >= shortest}
    assert set(long_ones.values()) == named, f"docs/testing.md names {sorted(named)}, the tests say {long_ones}"


def archived_jobs(folder: str) -> list[dict]:
    """The training runs of an archive in docs/results (harness.archive's files)."""
    runs = [json.loads(path.read_text())["run"] for path in sorted((REPO / "docs" / "results" / folder).glob("*.json"))]
    return [run for run in runs if run["tags"].get("harness.role") == "job"]


def clock(milliseconds: int) -> str:
    return datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.UTC).strftime("%H:%M")


def hours(milliseconds: int) -> str:
    """H:MM, the minutes begun left out: a duration said is never more than what it was."""
    return f"{milliseconds // 3_600_000}:{milliseconds // 60_000 % 60:02d}"


def wall_time(runs: list[dict]) -> int:
    """At least how long a study's runs took, in ms: from the first start to the last end, less every
    stretch over 10 minutes in which no run logged a point (time between sessions; within one a
    point comes every few seconds)."""
    moments = sorted({t for run in runs for points in run["metrics"].values() for _, t, _ in points})
    moments = sorted({*moments, *(run["start_time"] for run in runs), *(run["end_time"] for run in runs)})
    idle = sum(later - earlier for earlier, later in itertools.pairwise(moments) if later - earlier > 600_000)
    return moments[-1] - moments[0] - idle


def test_the_budget_curves_runs_and_times_are_its_archives():
    results, study = REPO / "docs" / "results.md", REPO / "experiments" / "budget_curve.yaml"
    fp32, bf16 = archived_jobs("budget_curve"), archived_jobs("budget_curve_bf16")
    assert {run["status"] for run in fp32 + bf16} == {"FINISHED"}
    start, end = min(run["start_time"] for run in fp32), max(run["end_time"] for run in fp32)
    day = datetime.datetime.fromtimestamp(start / 1000, datetime.UTC).date().isoformat()
    fp32_said = said(
        results, r"archive holds (\d+) of the 48 runs .*? from (\d+:\d\d) to (\d+:\d\d) on ([\d-]+) \((\d+:\d\d)\)"
    )
    assert fp32_said.groups() == (str(len(fp32)), clock(start), clock(end), day, hours(wall_time(fp32)))
    assert said(study, r"budget_curve \(fp32, AVX2 only: (\d+) of 48 in (\d+:\d\d)\)").groups() == (
        str(len(fp32)),
        hours(wall_time(fp32)),
    )
    assert said(study, r"budget_curve_bf16 \(bf16, AVX512-BF16: all (\d+), at least (\d+:\d\d)").groups() == (
        str(len(bf16)),
        hours(wall_time(bf16)),
    )
    assert said(results, r"In all at least (\d+:\d\d):").group(1) == hours(wall_time(bf16))


def test_the_order_of_p2s_units_the_page_gives_is_the_archives_and_p2s():
    """docs/results.md's order of the residual units by test error, here (the mean final test error of
    each unit's runs in docs/results/p2_units) and in P2's Table 2 (harness.paper)."""
    from harness import paper

    # Each unit's letter, as P2's Fig. 4 names it, from the source paper.py gives its ResNet-110 number.
    unit = {
        variant: found.group(1)
        for variant, published in paper.P2_VARIANT_TEST_ERROR.items()
        if (found := re.search(r"\(([a-e])\)$", published.source)) and "ResNet-110" in published.source
    }
    errors = {}
    for run in archived_jobs("p2_units"):
        variant = re.sub(r"-\d+", "", run["name"], count=1)  # resnet-56-bnadd: resnet-bnadd
        errors.setdefault(unit[variant], []).append(run["metrics"]["test_error"][-1][2])
    published = {letter: paper.p2_test_error(variant).error for variant, letter in unit.items()}
    here = sorted(errors, key=lambda letter: statistics.mean(errors[letter]))
    in_p2 = sorted(errors, key=published.get)
    order = r"([a-e](?: < [a-e])+)"
    text = said(
        REPO / "docs" / "results.md",
        rf"in test error {order} here, against {order} in P2's Table 2, whose worst is \(([a-e])\)",
    )
    assert text.groups() == (" < ".join(here), " < ".join(in_p2), in_p2[-1])


def test_the_precision_timings_the_pages_quote_agree_with_the_code_and_each_other():
    """A decision line quoted is the one harness.precision prints for its timings, a ratio beside two
    timings is theirs, and the pages that quote one measurement say the same of where it ran."""
    from harness import precision

    pages = {page.relative_to(REPO): prose(page) for page in DOCS}
    lines = [
        (page, m)
        for page, text in pages.items()
        for m in re.finditer(r"bf16 \S+ fp32 here \((\d+) ms against (\d+) ms .*?\): precision=auto is \w+", text)
    ]
    assert lines, "no page quotes the line precision=auto prints"
    for page, line in lines:
        fp32, bf16 = map(float, line.groups())
        assert line.group(0) == precision.choose("here", fp32, bf16).line(), page
    timings = r"(\d[\d,]*) (?:ms )?(?:in fp32 )?(?:against|and) (\d[\d,]*) ms(?: in bf16)?([^,;|]*?)(?:[,;|]|\. |$)"
    where = {}  # (fp32 ms, bf16 ms) -> {what a page says of where it was measured: page}
    for page, text in pages.items():
        for m in re.finditer(timings, text):
            fp32, bf16 = (float(n.replace(",", "")) for n in m.group(1, 2))
            for ratio in re.findall(r"\((\d+\.\d+)x\)", m.group(3)):
                assert ratio == f"{fp32 / bf16:.2f}", f"{page}: {m.group(0)}"
            if said_where := re.search(r"\bquiet\b|\bbeside [a-z ]*[a-z]", m.group(3)):
                where.setdefault((fp32, bf16), {})[said_where.group(0)] = page
    assert len(where) >= 2, "the pages no longer quote the precision measurements as this test reads them"
    assert all(len(said) == 1 for said in where.values()), where


def test_the_configuration_pages_rule_for_config_groups_is_hydras():
    """docs/configuration.md's groups that need `+group=option` are the ones Hydra refuses as
    `group=option`, and every other group takes its options as `group=option`."""
    from hydra.errors import ConfigCompositionException

    from harness.config import compose_config

    page = REPO / "docs" / "configuration.md"
    rows = re.findall(r"^\| `(\w+)` \| ((?:`\w+`(?:, )?)+) \| (\w+) \|$", page.read_text(), flags=re.M)
    needs_plus = said(page, r"a group without one \(([^)]*)\) needs `\+group=option`").group(1)
    assert backticked(needs_plus) == {group for group, _, default in rows if default == "none"}
    for group, options, default in rows:
        option = next(o for o in backticked(options) if o != default)
        if default == "none":
            compose_config(f"+{group}={option}")
            with pytest.raises(ConfigCompositionException):
                compose_config(f"{group}={option}")
        else:
            compose_config(f"{group}={option}")
