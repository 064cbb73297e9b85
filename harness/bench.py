"""`python -m harness.bench`: how close the training loop runs to the model's pure compute.

For each depth, on Fashion-MNIST with batch 128, images per second of
  (a) pure compute: forward, backward and SGD step on one fixed batch;
  (b) the harness loop (`harness.train.train`) with the default config: in-memory data and
      MLflow tracking into a temporary SQLite store, with the share of its time spent tracking;
  (c) a seed-style loop: torchvision's FashionMNIST with per-image ToTensor and a DataLoader;
then the ratios b/a and b/c, the share of a default-budget run spent probing layer responses
and gradients (`harness.analysis`), and the achieved GFLOP/s against the machine's own
large-matmul rate measured in the same run. All in one process, so that
ratios compare like with like on a noisy machine.

With --resize N all three see N x N images: (b) resizes each batch on the device
(dataset.resize=N), (c) runs the seed's own per-image Resize(N) before ToTensor. The seed's
experiment is `--depths 18 --resize 96`.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from harness.analysis import PROBE_IMAGES, probe
from harness.config import compose_config
from harness.data import load_data
from harness.models import build_model
from harness.tracking import MemoryTracker
from harness.tracking.mlflow_store import MlflowRun, connect
from harness.train import train

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


def timed_steps(batches, model: torch.nn.Module, steps: int, warmup: int = 3) -> float:
    """Images per second of forward, backward and SGD step over the batches `batches` yields."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for i, (images, labels) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == warmup + steps - 1:
            return steps * BATCH / (time.perf_counter() - start)
    raise ValueError("too few batches")


def pure_compute(depth: int, steps: int, size: int) -> float:
    images, labels = torch.randn(BATCH, 1, size, size), torch.randint(0, 10, (BATCH,))
    return timed_steps(((images, labels) for _ in iter(int, 1)), new_model(depth), steps)


def seed_style(depth: int, steps: int, root: Path, resize: int | None) -> float:
    pipeline = [transforms.ToTensor()]
    if resize:
        pipeline.insert(0, transforms.Resize(resize))
    dataset = FashionMNIST(root, train=True, transform=transforms.Compose(pipeline))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    return timed_steps(iter(loader), new_model(depth), steps)


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


def harness_loop(depth: int, steps: int, data, run: MlflowRun) -> tuple[float, float]:
    """Images per second of `harness.train.train` and the share of its time spent tracking."""
    # Like the 128-image evaluation split, a 128-image final training error keeps the closing
    # evaluations out of the timing.
    common = ["schedule.final_train_subset=128"] + ([f"dataset.resize={data.resize}"] if data.resize else [])
    cfg = compose_config(f"schedule.batch_size={BATCH}", f"schedule.iterations={steps}", f"schedule.eval_every={steps + 1}",
                         "analysis=false", *common)  # fmt: skip
    model = new_model(depth)
    train(compose_config("schedule.iterations=3", *common), model, data, MemoryTracker(), torch.device("cpu"))  # warm-up
    tracker = TimedTracker(run)
    start = time.perf_counter()
    train(cfg, model, data, tracker, torch.device("cpu"))
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--root", type=Path, default=Path("data"), help="Fashion-MNIST root, as dataset.root")
    parser.add_argument("--resize", type=int, default=None, help="images resized to N x N, as dataset.resize (the seed: 96)")
    args = parser.parse_args()

    # A 128-image evaluation split keeps the loop's closing evaluation out of the timing.
    data = load_data("fashion_mnist", args.root, True, 128, torch.device("cpu"), resize=args.resize)
    size = data.image_size
    gemm = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul 2048^3: {gemm:.1f} GFLOP/s; "
          f"{size}x{size} images")
    print("depth  pure(a) img/s  harness(b)  seed-style(c)    b/a    b/c  tracking  analysis  GFLOP/s (% of matmul)")
    with tempfile.TemporaryDirectory() as store:
        client, experiment_id = connect(f"sqlite:///{store}/mlflow.db", "bench")
        for depth in args.depths:
            a = pure_compute(depth, args.steps, size)
            b, tracking = harness_loop(depth, args.steps, data, MlflowRun.start(client, experiment_id, f"bench-{depth}", {}))
            c = seed_style(depth, args.steps, args.root, args.resize)
            gflops = step_flops(depth, size) * a / BATCH / 1e9
            analysis = analysis_share(depth, data, b)
            print(f"{depth:5d}  {a:13.0f}  {b:10.0f}  {c:13.0f}  {b / a:5.3f}  {b / c:5.3f}  {tracking:8.2%}  {analysis:8.2%}  "
                  f"{gflops:6.1f} ({gflops / gemm:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
