"""`python -m harness.bench`: how close the training loop runs to the model's pure compute.

For each depth, on Fashion-MNIST with batch 128, images per second of
  (a) pure compute: forward, backward and SGD step on one fixed batch;
  (b) the harness loop (`harness.train.train`) with the default config: in-memory data and
      MLflow tracking into a temporary SQLite store, with the share of its time spent tracking;
  (c) the starting project's loop: torchvision's FashionMNIST with per-image ToTensor and a DataLoader;
then the ratios b/a and b/c, the share of a default-budget run spent probing layer responses
and gradients (`harness.analysis`), and the achieved GFLOP/s against the machine's own
large-matmul rate measured in the same run. All in one process, so that
ratios compare like with like on a noisy machine.

With --resize N all three see N x N images: (b) resizes each batch on the device
(dataset.resize=N), (c) runs the starting project's own per-image Resize(N) before ToTensor. Its
experiment is `--depths 18 --resize 96`. With --precision bf16 all three train under bf16
autocast (the starting project itself trained fp32).

With --whole-run: how close a default run comes to its compute, per depth and precision: the
wall time of `python -m harness.run depth=D precision=P` from process start to exit (start-up,
data, store, evaluations, probes, checkpoints, the final pass and all) over its iterations times
the bare training step (forward, backward, SGD step) of the same net, batch, threads and
precision, measured in this process. The target: at most 1.15.

With --contention: what sharing the cores does to a default job. The default training step
(depth, batch size and threads of the default config), each in its own process as a sweep's
jobs are: alone, then beside 1 and 3 copies of itself that train all the while, against the
fair share (2x and 4x its time alone), for the harness's OpenMP setting and for each setting
that --compare names (environment variables set in every process), e.g.
`--compare GOMP_SPINCOUNT=300000` for libgomp's own default, the harness's before it set one.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from harness import OPENMP_WAIT, OPENMP_WAIT_VARIABLES, edge, record
from harness.analysis import PROBE_IMAGES, probe
from harness.config import compose_config
from harness.cores import torch_threads
from harness.data.memory import load_data
from harness.device import autocast
from harness.identity import resolve
from harness.models.resnet import build_model
from harness.precision import step_seconds
from harness.stats import t_interval
from harness.tracking import MemoryTracker
from harness.tracking.mlflow_store import MlflowRun, connect
from harness.train import train_job

BATCH = 128


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The practical limit: float32 GEMM throughput of this machine with torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def new_model(depth: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(depth, in_channels=1).to(memory_format=torch.channels_last)


def step_flops(depth: int, size: int) -> int:
    model, images, labels = new_model(depth), torch.randn(BATCH, 1, size, size), torch.randint(0, 10, (BATCH,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def timed_steps(batches, model: torch.nn.Module, steps: int, precision: str, warmup: int = 3) -> float:
    """Images per second of forward, backward and SGD step over the batches `batches` yields."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == warmup + steps - 1:
            return steps * BATCH / (time.perf_counter() - start)
    raise ValueError("too few batches")


def pure_compute(depth: int, steps: int, size: int, precision: str) -> float:
    images, labels = torch.randn(BATCH, 1, size, size), torch.randint(0, 10, (BATCH,))
    return timed_steps(((images, labels) for _ in iter(int, 1)), new_model(depth), steps, precision)


def starting_project_loop(depth: int, steps: int, root: Path, resize: int | None, precision: str) -> float:
    pipeline = [transforms.ToTensor()]
    if resize:
        pipeline.insert(0, transforms.Resize(resize))
    dataset = FashionMNIST(root, train=True, transform=transforms.Compose(pipeline))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    return timed_steps(iter(loader), new_model(depth), steps, precision)


class TimedTracker:
    """Passes everything on to a tracker and adds up the seconds spent in it."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.name = tracker.name
        self.seconds = 0.0

    def __getattr__(self, method: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return getattr(self.tracker, method)(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def harness_loop(depth: int, steps: int, data, run: MlflowRun, precision: str) -> tuple[float, float]:
    """Images per second of `harness.train.train` and the share of its time spent tracking."""
    # Like the 128-image evaluation split, a 128-image final training error keeps the closing
    # evaluations out of the timing.
    common = ["schedule.final_train_subset=128", f"precision={precision}"]
    common += [f"dataset.resize={data.resize}"] if data.resize else []
    cfg = compose_config(
        f"schedule.batch_size={BATCH}",
        f"schedule.iterations={steps}",
        f"schedule.eval_every={steps + 1}",
        "analysis=false",
        *common,
    )
    model = new_model(depth)
    warm_up = compose_config("schedule.iterations=3", *common)
    warm_up = resolve(warm_up, edge.decide(warm_up))
    train_job(warm_up, model, data, MemoryTracker(), torch.device("cpu"))
    tracker = TimedTracker(run)
    start = time.perf_counter()
    train_job(resolve(cfg, edge.decide(cfg)), model, data, tracker, torch.device("cpu"))
    tracker.finish()  # the last flush belongs to the run's cost
    seconds = time.perf_counter() - start
    return steps * BATCH / seconds, tracker.seconds / seconds


def analysis_share(depth: int, data, images_per_second: float) -> float:
    """The share of a default-budget run's time spent probing layer responses and gradients:
    the measured cost of one probe times the probes per run, against the run's training time."""
    cfg = compose_config()
    model = new_model(depth)
    images, labels = data.normalise(data.eval_images[:PROBE_IMAGES]), data.eval_labels[:PROBE_IMAGES]
    probe(model, images, labels)  # warm-up
    start = time.perf_counter()
    probe(model, images, labels)
    seconds = time.perf_counter() - start
    probes = cfg.schedule.iterations // cfg.schedule.analysis_every
    training = cfg.schedule.iterations * cfg.schedule.batch_size / images_per_second
    return probes * seconds / training


def default_steps():
    """Training steps of the default config's net, batch and threads on random Fashion-MNIST-sized
    images, forever; yields each step's seconds."""
    cfg = compose_config()
    torch.set_num_threads(torch_threads(cfg))
    model = new_model(cfg.depth)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(cfg.schedule.batch_size, 1, 28, 28), torch.randint(0, 10, (cfg.schedule.batch_size,))
    while True:
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield time.perf_counter() - start


def contention_worker() -> None:
    """One process of the contention mode: warms up, says so, then for each line it reads trains
    that many steps and prints their median milliseconds, or, told `compete`, trains until it is
    stopped."""
    steps = default_steps()
    for _ in range(CONTENTION_WARMUP):
        next(steps)
    print("warm", flush=True)
    for line in sys.stdin:
        if line.strip() == "compete":
            for _ in steps:
                pass
        print(f"{1000 * statistics.median(next(steps) for _ in range(int(line))):.2f}", flush=True)


CONTENTION_WARMUP = 5
TARGETS = {1: 2.5, 3: 5.0}  # issue 14: a job beside N others at most this many times its time alone


class Worker:
    """A process that trains the default job's step with an OpenMP setting (environment variables
    that replace the harness's; none for the harness's own)."""

    def __init__(self, env: dict[str, str]):
        base = (
            os.environ
            if not env
            else {key: value for key, value in os.environ.items() if key not in OPENMP_WAIT_VARIABLES}
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "harness.bench", "--contention-worker"],
            env={**base, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> "Worker":
        assert self.process.stdout.readline().strip() == "warm", "a contention worker failed to start"
        return self

    def tell(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def milliseconds(self, steps: int) -> float:
        self.tell(str(steps))
        return float(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def contention(steps: int, repeats: int, settings: dict[str, dict[str, str]]) -> None:
    jobs = {name: Worker(env) for name, env in settings.items()}
    alone = {name: [] for name in settings}
    try:
        for job in jobs.values():
            job.ready()
        # Alone, the settings take turns, `steps` at a time, so that a slow minute of the host hits them alike.
        for _ in range(repeats):
            for name, job in jobs.items():
                alone[name].append(job.milliseconds(steps))
        print(
            f"the default job's training step: median ms of {steps} steps, {torch_threads(compose_config())} threads, "
            f"{len(os.sched_getaffinity(0))} cores. Alone: the median (range) of {repeats} turns, and the step against "
            f"the first setting's in the same turn: geometric mean (95% t interval)"
        )
        print(
            f"{'OpenMP setting':32}  {'alone ms':>19}  {'vs first':>20}  "
            + "  ".join(f"beside {others}: ms, x alone" for others in TARGETS)
        )
        first = alone[next(iter(settings))]
        for name, job in jobs.items():
            median = statistics.median(alone[name])
            versus_first = t_interval([math.log(ms / reference) for ms, reference in zip(alone[name], first)])
            low, high = math.exp(versus_first.low), math.exp(versus_first.high)
            versus_first = f"{math.exp(versus_first.mean):.3f} ({low:.3f}-{high:.3f})"
            beside = []
            for others in TARGETS:
                competitors = [Worker(settings[name]) for _ in range(others)]
                try:
                    for competitor in competitors:
                        competitor.ready().tell("compete")
                    beside.append(job.milliseconds(steps))
                finally:
                    for competitor in competitors:
                        competitor.stop()
            spread = f"({min(alone[name]):.1f}-{max(alone[name]):.1f})"
            print(
                f"{name:32}  {median:6.1f} {spread:>12}  {versus_first:>20}  "
                + "  ".join(f"{ms:11.1f} {ms / median:6.2f}x" for ms in beside),
                flush=True,
            )
    finally:
        for job in jobs.values():
            job.stop()
    print(
        f"{'fair share / target':32}  {'':19}  {'':20}  "
        + "  ".join(f"{others + 1:11d}x <={target}x" for others, target in TARGETS.items())
    )


WHOLE_RUN_TARGET = 1.15


def bare_step_seconds(cfg, steps: int, image_size: int = 28) -> list[float]:
    """Seconds of each of `steps` training steps of the config's net, batch, threads and precision."""
    decided = edge.decide(cfg)
    torch.set_num_threads(decided.threads)
    model = new_model(cfg.depth)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batch = cfg.schedule.batch_size
    images, labels = torch.randn(batch, 1, image_size, image_size), torch.randint(0, 10, (batch,))
    seconds = [step_seconds(model, optimizer, images, labels, decided.precision) for _ in range(steps + 3)]
    return seconds[3:]  # after 3 warm-up steps


def whole_run(depths: list[int], precisions: list[str], steps: int, root: Path, overrides: list[str]) -> None:
    """The whole default run against its bare steps, one line per depth and precision."""
    print(f"torch {torch.__version__}; each run: python -m harness.run depth=D precision=P {' '.join(overrides)}")
    print("into one SQLite store, created before the first (a new store's tables take MLflow 1.5-3 s once)")
    print("loop s: the run's training loop (steps, evaluations, probes, checkpoints), as it logs it")
    print("depth  precision  threads  bare step ms  iterations  whole run s  loop s  run / (iterations x step)")
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        client, experiment_id = connect(store, compose_config().tracking.experiment)
        for depth in depths:
            for precision in precisions:
                run_overrides = [f"depth={depth}", f"precision={precision}", "device=cpu", *overrides]
                cfg = compose_config(*run_overrides)
                # The bare steps before and after the run, so that a slow minute of the host weighs on both.
                before = bare_step_seconds(cfg, steps)
                command = [sys.executable, "-m", "harness.run", *run_overrides, f"dataset.root={root.resolve()}",
                           f"tracking.uri={store}"]  # fmt: skip
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, cwd=folder)
                seconds = time.perf_counter() - start
                step = statistics.median(before + bare_step_seconds(cfg, steps))
                [run] = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
                loop = run.data.metrics[record.SECONDS_PER_ITERATION] * cfg.schedule.iterations
                whole_run_line(depth, precision, cfg, step, seconds, loop)


def whole_run_line(depth: int, precision: str, cfg, step: float, seconds: float, loop: float) -> None:
    iterations = cfg.schedule.iterations
    ratio, decided = seconds / (iterations * step), edge.decide(cfg)
    print(
        f"{depth:5d}  {decided.precision:>9}  {decided.threads:7d}  {1000 * step:12.1f}  "
        f"{iterations:10d}  {seconds:11.1f}  {loop:6.1f}  {ratio:6.3f} (target <= {WHOLE_RUN_TARGET})",
        flush=True,
    )


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--root", type=Path, default=Path("data"), help="Fashion-MNIST root, as dataset.root")
    parser.add_argument(
        "--resize", type=int, default=None, help="images resized to N x N, as dataset.resize (the starting project: 96)"
    )
    parser.add_argument("--contention", action="store_true", help="the default job alone and beside 1 and 3 copies")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="with --contention: other OpenMP settings to measure beside the harness's, e.g. GOMP_SPINCOUNT=300000",
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="with --contention: turns alone per setting, --steps each"
    )
    parser.add_argument("--whole-run", action="store_true", help="a default run's wall time against its bare steps")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="with --whole-run")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="of (a), (b) and (c): bf16 runs them under autocast",
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="with --whole-run: added to every run"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="P1's recipe on CUDA: rates, settings, runs at once, Table 6's time"
    )
    parser.add_argument(
        "--plan-store", type=int, nargs="+", metavar="N", help="the plan's store queries against stores of N runs"
    )
    parser.add_argument("--contention-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-worker", nargs="+", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.contention_worker:
        return contention_worker()
    if args.gpu or args.gpu_worker:
        from harness import bench_gpu

        if args.gpu_worker:
            barrier, copies, depth, seconds, *overrides = args.gpu_worker
            return bench_gpu.worker(Path(barrier), int(copies), int(depth), float(seconds), overrides)
        return bench_gpu.main()
    if args.plan_store:
        from harness import bench_store

        return bench_store.main(args.plan_store)
    if args.whole_run:
        return whole_run(args.depths, args.precisions, args.steps, args.root, args.overrides)
    if args.contention:
        settings = {f"{OPENMP_WAIT} (harness)": {}}
        settings |= {setting: dict(item.split("=", 1) for item in setting.split()) for setting in args.compare}
        return contention(args.steps, args.repeats, settings)
    return loop_table(args.depths, args.steps, args.root, args.resize, args.precision)


def loop_table(depths: list[int], steps: int, root: Path, resize: int | None, precision: str) -> None:
    """(a) the bare compute, (b) the harness's loop and (c) the starting project's, per depth."""
    # A 128-image evaluation split keeps the loop's closing evaluation out of the timing.
    data = load_data("fashion_mnist", root, True, 128, torch.device("cpu"), resize=resize)
    size = data.image_size
    gemm = matmul_gflops()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul 2048^3: {gemm:.1f} GFLOP/s; "
        f"{size}x{size} images, {precision}"
    )
    print("depth  pure(a) img/s  harness(b)  starting(c)    b/a    b/c  tracking  analysis  GFLOP/s (% of matmul)")
    with tempfile.TemporaryDirectory() as store:
        client, experiment_id = connect(f"sqlite:///{store}/mlflow.db", "bench")
        for depth in depths:
            a = pure_compute(depth, steps, size, precision)
            run = MlflowRun.start(client, experiment_id, f"bench-{depth}", {})
            b, tracking = harness_loop(depth, steps, data, run, precision)
            c = starting_project_loop(depth, steps, root, resize, precision)
            gflops = step_flops(depth, size) * a / BATCH / 1e9
            analysis = analysis_share(depth, data, b)
            print(
                f"{depth:5d}  {a:13.0f}  {b:10.0f}  {c:13.0f}  {b / a:5.3f}  {b / c:5.3f}  "
                f"{tracking:8.2%}  {analysis:8.2%}  {gflops:6.1f} ({gflops / gemm:.0%})"
            )


if __name__ == "__main__":
    main()
