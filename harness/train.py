"""The training loop: one function, read top to bottom.

Iteration-based, as P1 counts its schedule: `schedule.iterations` SGD steps of
`schedule.batch_size` images, lr divided by 10 at the fractions `schedule.lr_drops` of the
iterations. The loop reports to a `Tracker` and knows nothing of MLflow.
"""

import logging
import math
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from harness import analysis, record
from harness.config import OptimizerConfig, ScheduleConfig
from harness.data.memory import BatchSampler, Data, augment
from harness.device import autocast
from harness.identity import Job
from harness.tracking import Tracker

log = logging.getLogger(__name__)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at iteration {step}: loss {loss}")
        self.step = step


class ProgressLog:
    """The progress bar's stand-in where tqdm switches itself off (output to a file, a cluster
    job): a log line at most every `every` seconds with the iteration, the rate, the running
    training error and the time left."""

    def __init__(self, name: str, start: int, total: int, batch_size: int, enabled: bool, every: float = 30.0):
        self.name, self.start, self.total, self.batch_size, self.enabled, self.every = (
            name,
            start,
            total,
            batch_size,
            enabled,
            every,
        )
        self.started = self.last = time.monotonic()

    def update(self, iteration: int, train_error: float) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        rate = (iteration - self.start) / (now - self.started)
        left = (self.total - iteration) / rate if rate > 0 else math.nan
        error = "not yet measured" if math.isnan(train_error) else f"{100 * train_error:.2f}%"
        eta = "?" if math.isnan(left) else f"{int(left // 60)}:{int(left % 60):02d}"
        log.info(
            "%s: iteration %d/%d, %.2f it/s (%.0f images/s), running training error %s, ETA %s min",
            self.name,
            iteration,
            self.total,
            rate,
            rate * self.batch_size,
            error,
            eta,
        )


@dataclass
class Result:
    train_error: float  # running training error of the last logging window (P1's dashed curves)
    train_loss: float
    final_train_error: float  # the final model on the training split, evaluation mode, no augmentation
    final_train_loss: float
    eval_error: float  # on the whole evaluation split (test or validation), after the last iteration
    eval_loss: float
    eval_split: str  # "test" or "validation": the metrics are test_* or val_*
    iterations: int
    seconds: float


def make_optimizer(settings: OptimizerConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr, decay = settings.lr, settings.weight_decay
    if settings.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=decay)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)


def compiled(model: nn.Module, setting: str) -> nn.Module:
    """What the training step calls: the model, or `torch.compile` of it. Evaluations and probes
    call the model itself: they run a few times a run, not worth a compilation each."""
    if setting.lower() == "false":
        return model
    return torch.compile(model, mode=None if setting.lower() == "true" else setting)


def peak_memory(device: torch.device) -> dict[str, float]:
    peak = {record.PEAK_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        peak[record.PEAK_GPU_MB] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def warmup_end(schedule: ScheduleConfig) -> int:
    """The iteration at which P1's warm-up ends at the latest; 0 without one (a job resolved for
    a net too shallow to warm up has none: harness.identity). It ends earlier, at a logging
    boundary, once the training error is below `schedule.warmup_until_error`."""
    if schedule.warmup_lr is None:
        return 0
    first_drop = min(
        (round(fraction * schedule.iterations) for fraction in schedule.lr_drops), default=schedule.iterations
    )
    return min(first_drop, schedule.warmup_max_iterations or schedule.iterations)


def get_lr(step: int, schedule: ScheduleConfig, base_lr: float, warming_up: bool) -> float:
    """The learning rate of a step, from the iteration and what the loop has seen: P1's warm-up
    rate while the net warms up (up to `warmup_end`, unless the training error fell below
    `schedule.warmup_until_error` before), then the base rate divided by 10 at each fraction of the
    iterations in `schedule.lr_drops`."""
    if warming_up and step < warmup_end(schedule):
        return schedule.warmup_lr
    return base_lr * 0.1 ** sum(step >= round(fraction * schedule.iterations) for fraction in schedule.lr_drops)


def eval_batch(device: torch.device) -> int:
    """Images per forward pass of an evaluation. On the CPU a batch's activations must stay in
    the caches: 128 images ran 1.2-2x faster per image than 1000 on 2 cores (docs/performance.md);
    a GPU wants large batches."""
    return 128 if device.type == "cpu" else 1000


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Data, images: torch.Tensor, labels: torch.Tensor, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean loss, error rate) of the model in evaluation mode on these (uint8) images."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    wrong = torch.zeros((), device=images.device)
    batch = eval_batch(images.device)
    for start in range(0, len(images), batch):
        target = labels[start : start + batch]
        with autocast(images.device, precision):
            logits = model(data.normalise(images[start : start + batch]))
            loss_sum += F.cross_entropy(logits, target, reduction="sum")
        wrong += (logits.argmax(dim=1) != target).sum()
    model.train()
    return loss_sum.item() / len(images), wrong.item() / len(images)


def training_state(iteration: int, warming_up: bool, model: nn.Module, optimizer, sampler: BatchSampler) -> dict:
    """Everything a resumed run needs to go on bit for bit as if it had never stopped."""
    return {
        "iteration": iteration,
        "warming_up": warming_up,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_state(state: dict, model: nn.Module, optimizer, sampler: BatchSampler) -> tuple[int, bool]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["iteration"], state["warming_up"]


def final_metrics(model: nn.Module, data: Data, subset: int, precision: str) -> dict[str, float]:
    """The last point of the test curve, always on the whole evaluation split, and the final
    training error. The running error averages a window of a moving model, in training mode: the
    claims about training error compare the final model itself, on a fixed sample of the
    training split."""
    eval_loss, eval_error = evaluate(model, data, data.eval_images, data.eval_labels, precision)
    train_images, train_labels = data.train_images[:subset], data.train_labels[:subset]
    final_train_loss, final_train_error = evaluate(model, data, train_images, train_labels, precision)
    return {
        record.eval_metric(data.eval_split, "loss"): eval_loss,
        record.eval_metric(data.eval_split): eval_error,
        record.FINAL_TRAIN_LOSS: final_train_loss,
        record.FINAL_TRAIN_ERROR: final_train_error,
    }


def train(
    model: nn.Module,
    data: Data,
    schedule: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    tracker: Tracker,
    *,
    device: torch.device,
    seed: int,
    precision: str = "fp32",
    crop_pad: int | None = None,
    probe: bool = True,
    compile: str = "False",
) -> Result:
    """Train `model` for `schedule.iterations` steps from the optimizer's own base rate, telling
    `tracker`; a run the tracker holds a checkpoint of goes on from it. `seed` orders the data and
    the augmentation, `crop_pad` pads each image before P1's random crop and flip (None: no
    augmentation), `probe` logs layer responses and gradients (P1 Fig. 7) every
    `schedule.analysis_every` iterations, `compile` is torch.compile's mode or "False"."""
    generator = torch.Generator(device=device).manual_seed(seed)
    sampler = BatchSampler(len(data.train_images), schedule.batch_size, generator)
    base_lr = optimizer.defaults["lr"]
    # P1 (ResNet-110): a low rate until the training error falls below 80%, then the base rate.
    warmup_until = warmup_end(schedule)
    warming_up = warmup_until > 0
    start = 0
    saved = tracker.restore()
    if saved is not None:  # a stopped run: continue exactly where its last checkpoint left it
        start, warming_up = restore_state(saved, model, optimizer, sampler)

    if probe:  # P1 Fig. 7 and §4.1: responses and gradients on a fixed probe batch
        probe_images = data.normalise(data.eval_images[: analysis.PROBE_IMAGES])
        probe_labels = data.eval_labels[: analysis.PROBE_IMAGES]

    eval_loss_key, eval_error_key = record.eval_metric(data.eval_split, "loss"), record.eval_metric(data.eval_split)
    window_loss = torch.zeros((), device=device)
    window_wrong = torch.zeros((), device=device)
    window_steps = 0
    train_loss = train_error = math.nan
    step_model = compiled(model, compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_time = time.perf_counter()
    model.train()
    steps = range(start, schedule.iterations)
    progress = tqdm(
        steps, desc=tracker.name, unit="it", initial=start, total=schedule.iterations, disable=None, leave=False
    )
    progress_log = ProgressLog(tracker.name, start, schedule.iterations, schedule.batch_size, enabled=progress.disable)
    for step in progress:
        lr = get_lr(step, schedule, base_lr, warming_up)
        for group in optimizer.param_groups:
            group["lr"] = lr

        indices = sampler.next()
        images = data.normalise(data.train_images[indices])
        if crop_pad is not None:
            images = augment(images, crop_pad, generator)
        labels = data.train_labels[indices]

        with autocast(device, precision):  # bf16: convolutions and linear layers; the loss in fp32
            logits = step_model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        # Accumulate on the device; reading values back every step would stall a GPU.
        window_loss += loss.detach()
        window_wrong += (logits.detach().argmax(dim=1) != labels).sum()
        window_steps += 1

        iteration = step + 1  # metrics are indexed by iterations completed
        if iteration % schedule.log_every == 0 or iteration == schedule.iterations:
            train_loss = window_loss.item() / window_steps
            train_error = window_wrong.item() / (window_steps * schedule.batch_size)
            if not math.isfinite(train_loss):
                raise DivergedError(iteration, train_loss)
            tracker.log_metrics(
                {record.TRAIN_LOSS: train_loss, record.TRAIN_ERROR: train_error, record.LR: lr}, step=iteration
            )
            progress.set_postfix(loss=f"{train_loss:.3f}", err=f"{100 * train_error:.2f}%", refresh=False)
            if warming_up and (train_error < schedule.warmup_until_error or iteration >= warmup_until):
                warming_up = False
                tracker.log_metrics({record.WARMUP_ENDED_AT: min(iteration, warmup_until)}, step=iteration)
            window_loss.zero_()
            window_wrong.zero_()
            window_steps = 0

        if iteration % schedule.eval_every == 0 and iteration < schedule.iterations:
            subset = schedule.eval_subset
            eval_loss, eval_error = evaluate(
                model, data, data.eval_images[:subset], data.eval_labels[:subset], precision
            )
            tracker.log_metrics({eval_loss_key: eval_loss, eval_error_key: eval_error}, step=iteration)

        if probe and (iteration % schedule.analysis_every == 0 or iteration == schedule.iterations):
            analysis.log_probe(model, probe_images, probe_labels, tracker, iteration)

        # Checkpoints fall on logging boundaries (the config checks it): the window is empty.
        if schedule.checkpoint_every and iteration % schedule.checkpoint_every == 0 and iteration < schedule.iterations:
            tracker.checkpoint(training_state(iteration, warming_up, model, optimizer, sampler))
        progress_log.update(iteration, train_error)

    final = final_metrics(model, data, schedule.final_train_subset, precision)
    seconds = time.perf_counter() - start_time
    if schedule.iterations > start:
        final[record.SECONDS_PER_ITERATION] = seconds / (schedule.iterations - start)
    final |= peak_memory(device)
    tracker.log_metrics(final, step=schedule.iterations)
    progress.close()
    return Result(
        train_error=train_error,
        train_loss=train_loss,
        final_train_error=final[record.FINAL_TRAIN_ERROR],
        final_train_loss=final[record.FINAL_TRAIN_LOSS],
        eval_error=final[eval_error_key],
        eval_loss=final[eval_loss_key],
        eval_split=data.eval_split,
        iterations=schedule.iterations,
        seconds=seconds,
    )


def train_job(job: Job, model: nn.Module, data: Data, tracker: Tracker, device: torch.device) -> Result:
    """The loop, as a job's config sets it."""
    config = job.config
    return train(
        model,
        data,
        config.schedule,
        make_optimizer(config.optimizer, model),
        tracker,
        device=device,
        seed=config.seed,
        precision=config.precision,
        crop_pad=config.dataset.pad if config.dataset.augment else None,
        probe=config.analysis,
        compile=config.compile,
    )
