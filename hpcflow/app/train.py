"""The training loop: reverse-KL training of a gauge-equivariant flow, data-parallel over ranks.

One step (docs/physics.md, "Training and sampling"):

1. every rank draws its share (:meth:`~hpcflow.app.context.RunContext.share`) of the global
   batch of prior samples; sample ``i`` of step ``t`` comes from its own stream
   ``(train.seed, t, i)``, so the numbers do not depend on the rank count;
2. push them through the flow: ``U = f(z)``, ``log q(U) = -log|det J|``;
3. loss = batch mean of ``log q(U) + S(U)`` (= KL(q||p) - log Z); backward (with
   ``train.gradient: path``, through ``log q`` re-evaluated by
   :func:`~hpcflow.app.propose.path_log_prob`);
4. ONE collective (``comm.allreduce_gradients_``): the gradients, averaged over ranks; every
   sample's log weight (and inverse error), each rank's in its global rows and zeros elsewhere,
   so that the sum is the whole batch on every rank (loss, ESS and log Z need all of it); and
   every rank's stop votes (a signal received, the wall time running out), so that all ranks
   stop after the same step;
5. gradients clipped, and an Adam/amsgrad step with a staged learning rate (a function of the
   step alone); non-finite steps, and path-gradient steps whose inverse pass misses the forward
   ``log q`` by more than ``train.max_inverse_error``, are skipped and counted; with
   ``train.ema``, the parameters' moving average (:class:`~hpcflow.app.optim.ParameterAverage`)
   folds the new parameters in: evaluations, checkpoints and ``hpcflow sample`` use it.

Around it: metrics (rank 0 writes ``metrics.jsonl``), evaluation on a larger batch (one more
collective), atomic checkpoints with automatic resume (one collective: the check that every rank
holds the same state, ``comm.check_replicas_``; also every ``distributed.check_every`` steps),
signals and wall time, plots at the end. With ``train.pretrain``, :func:`prepare_training`
first trains the same model on a smaller lattice in ``RUN_DIR/pretrain`` and starts this
training from its flow (volume transfer).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import set_deterministic, set_float32_precision
from ..errors import ConfigError, HpcflowError
from ..estimators import ess, independence_metropolis, logsumexp
from ..flows.prior import STREAM_EVAL, STREAM_TRAIN
from ..io.atomic import write_atomic
from ..io.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .build import (
    build_action,
    build_model,
    model_from_checkpoint,
    read_checkpoint,
    restore_average,
)
from .config import check_resumable, pretrain_config
from .context import RunContext
from .metrics import MetricsLog, TensorBoardLog
from .optim import ParameterAverage, build_optimizer, set_lr
from .plots import plot_training
from .propose import StartEnsemble, propose

__all__ = ["Trainer", "TrainResult", "job_elapsed", "model_seed", "prepare_training"]

_STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
#: why training stops early, by priority (a signal names its sender, the scheduler or a person,
#: so it is reported before the wall time): one slot each in the stop votes of a step
_STOP_REASONS = (*_STOP_SIGNALS, "walltime")
JOB_START_ENV = "HPCFLOW_JOB_START"
"""Environment variable with the job's start (Unix epoch seconds, set by the batch scripts of
launch/): ``train.walltime`` then counts from the job's start, not from the trainer's."""


def job_elapsed(environ=None, now: float | None = None) -> float:
    """Seconds since ``$HPCFLOW_JOB_START`` (0 when unset, unreadable or in the future)."""
    environ = os.environ if environ is None else environ
    try:
        start = float(environ.get(JOB_START_ENV, ""))
    except ValueError:
        return 0.0
    elapsed = (time.time() if now is None else now) - start
    return elapsed if math.isfinite(elapsed) and elapsed > 0 else 0.0


def _max_abs(x: np.ndarray) -> float:
    """``max |x|`` as a Python float (``inf`` when any entry is not finite)."""
    d = float(np.abs(x).max())
    return d if math.isfinite(d) else math.inf


def model_seed(seed: int) -> int:
    """Seed of the network initialization, derived from the master seed."""
    return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


@dataclass
class TrainResult:
    step: int
    reason: str  # "done", "signal SIGTERM", "walltime"
    last: dict


class Trainer:
    """Training of the sampler ``build_model(cfg)`` (a flow by the reverse KL, a stochastic
    flow by its mean work) in ``ctx.run_dir`` on the ranks of ``ctx.comm``
    (:class:`~hpcflow.app.context.RunContext`). A sampler without parameters (annealing) only
    gets its run directory and a step-0 checkpoint, so that ``hpcflow sample RUN_DIR`` works
    for every kind."""

    def __init__(self, cfg, ctx: RunContext, *, run_dir: str | Path | None = None,
                 init_from: str | Path | None = None, label: str = "train"):
        self.cfg = cfg
        self.tc = cfg.train
        self.ctx = ctx
        self.run_dir = Path(run_dir) if run_dir is not None else ctx.run_dir
        self.init_from = str(init_from) if init_from is not None else self.tc.init_from
        self.label = label
        self.comm = comm = ctx.comm
        for key in ("batch_size", "eval_batch_size"):
            n = getattr(self.tc, key)
            if n % comm.size and (key == "batch_size" or self.tc.eval_every):
                raise ConfigError(f"train.{key}", f"the global batch {n} does not split evenly "
                                  f"over {comm.size} ranks; use a multiple of {comm.size}")
        # before the model exists: cuBLAS reads its workspace setting at its first call
        set_float32_precision(cfg.distributed.tf32)
        line = set_deterministic(self.tc.deterministic)
        if line:
            ctx.log.info(line)
        torch.manual_seed(model_seed(self.tc.seed))
        self.model = build_model(cfg).to(comm.device)
        self.model.recompute = self.tc.recompute_layers
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, self.tc) if self.params else None
        self.average: ParameterAverage | None = None  # train.ema; set in _resume
        self.action = build_action(cfg)
        s = cfg.sampler
        self.start = (StartEnsemble(s.start, cfg.lattice.group, cfg.lattice.shape, s.beta_start)
                      if s.kind != "flow" and s.beta_start > 0 else None)
        self.step = 0
        self.bad_steps = 0
        self.bad_reason = ""
        self.skipped = 0
        self.elapsed_before = 0.0
        self.max_step_time = 0.0
        self.ckpt_time = 0.0
        self._signal = 0
        self._stop_reason = ""
        self._t_start = time.perf_counter()
        self._walltime = math.inf  # seconds after _t_start (run() sets both)
        self._last: dict = {}
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self._resume()

    # ------------------------------------------------------------------ set-up and resume
    def _resume(self) -> None:
        comm = self.comm
        ckpt = None
        if comm.is_root:  # the run directory is made once the start is known to work
            ckpt = load_latest_checkpoint(self.checkpoint_dir, warn=self.ctx.log.warning)
        # Every rank resumes from the checkpoint rank 0 chose (one read, one broadcast).
        ckpt = comm.broadcast_object(ckpt if comm.is_root else None)
        if ckpt is not None:
            check_resumable(ckpt["config"], self.cfg, ckpt["path"])
            self.model.load_state_dict(ckpt["model"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            self.step = int(ckpt["step"])
            state = ckpt["trainer"]
            self.skipped = int(state["skipped"])
            self.elapsed_before = float(state["elapsed"])
            self.ctx.log.info(f"resuming from {ckpt['path']} at step {self.step}")
        else:
            if self.init_from:
                self._initialize_from(self.init_from)
            comm.broadcast_model_(self.model)
        if self.tc.ema > 0 and self.params:
            self.average = ParameterAverage.of(self.model, self.tc.ema)
            if ckpt is not None and ckpt.get("average"):  # else: start from the parameters
                restore_average(self.average, ckpt)
        if comm.is_root:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl",
                                      resume_step=self.step if ckpt is not None else None)
            self.tensorboard = (TensorBoardLog(self.run_dir / "tensorboard")
                                if self.tc.tensorboard else None)

    def _initialize_from(self, source: str) -> None:
        """``train.init_from``: this model's parameters from the sampler of checkpoint or run
        directory ``source`` (rank 0 reads it, every rank checks and loads it)."""
        comm = self.comm
        ckpt = read_checkpoint(source) if comm.is_root else None
        ckpt = comm.broadcast_object(ckpt)
        check_resumable(ckpt["config"], self.cfg, ckpt["path"], transfer=True)
        trained = model_from_checkpoint(ckpt)
        try:
            self.model.load_state_dict(trained.state_dict())
        except RuntimeError as err:  # the same keys, yet another layer structure
            raise ConfigError("train.init_from", f"the model of {ckpt['path']} does not fit "
                              f"this lattice: {str(err).splitlines()[-1].strip()}") from None
        shape = "x".join(map(str, trained.config.lattice.shape))
        self.ctx.log.info(f"parameters from {ckpt['path']} (step {trained.checkpoint_step}, "
                          f"lattice {shape})")

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> dict:
        """Steps 1-5 of the module docstring for ``self.step``; returns its metrics and sets
        ``_stop_reason`` when any rank voted to stop."""
        tc, model, comm = self.tc, self.model, self.comm
        local = self.ctx.share(tc.batch_size)
        micro = tc.micro_batch_size or len(local)
        lr = set_lr(self.optimizer, self.step, tc)
        self.optimizer.zero_grad(set_to_none=False)
        path = tc.gradient == "path"
        per_sample = []  # columns: log w, and |log q(forward) - log q(inverse)| for path
        for lo in range(0, len(local), micro):
            p = propose(model, self.action, local[lo:lo + micro], seed=tc.seed,
                        stream=STREAM_TRAIN, step=self.step, train=True, path=path,
                        start=self.start, backward_scale=1 / len(local))  # equal shares
            columns = [p.log_weight] + ([p.inverse_error.to(p.log_weight.dtype)] if path else [])
            per_sample.append(torch.stack(columns, dim=1))
        rows = self.ctx.place(torch.cat(per_sample), tc.batch_size)  # [B, columns]
        votes = self._stop_votes().to(rows)
        summed = comm.allreduce_gradients_(self.params,
                                           sums=torch.cat([rows.reshape(-1), votes]))
        # the host sees the columns and votes once per step
        summed = summed.double().cpu()
        gathered = summed[:rows.numel()].view(rows.shape).numpy()
        self._stop_reason = _stop_reason(summed[rows.numel():].tolist())
        log_w = gathered[:, 0]
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        loss = -float(log_w.mean())
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        rec = {"step": self.step + 1, "loss": loss, "ess": ess(log_w),
               "log_z": _log_mean_exp(log_w) if finite else None, "lr": lr,
               "grad_norm": grad_norm}
        self.bad_reason = "" if finite else "non-finite loss or gradient"
        if path:
            inverse_error = _max_abs(gathered[:, 1])
            rec["inverse_error"] = inverse_error
            if finite and inverse_error > tc.max_inverse_error > 0:
                self.bad_reason = (f"inverse pass off by {inverse_error:.3g} nats in log q > "
                                   f"train.max_inverse_error = {tc.max_inverse_error}")
        if not self.bad_reason:
            self.optimizer.step()
            if self.average is not None:
                self.average.update(self.step + 1)
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            self.skipped += 1
        self.step += 1
        rec["skipped"] = self.skipped
        return rec

    @torch.no_grad()
    def evaluate(self) -> dict:
        """ESS, log Z and independence-Metropolis acceptance on ``eval_batch_size`` fresh
        samples (stream ``(seed, eval, step)``), spread over the ranks; of the parameters'
        moving average with ``train.ema`` (the flow ``hpcflow sample`` draws from)."""
        tc = self.tc
        local = self.ctx.share(tc.eval_batch_size)
        micro = tc.micro_batch_size or len(local)
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            log_w = [propose(self.model, self.action, local[lo:lo + micro], seed=tc.seed,
                             stream=STREAM_EVAL, step=self.step, start=self.start).log_weight
                     for lo in range(0, len(local), micro)]
        lw = self.ctx.gather(torch.cat(log_w), tc.eval_batch_size).double().cpu().numpy()
        uniforms = np.random.default_rng([tc.seed, STREAM_EVAL, self.step]).random(len(lw))
        _, accepted, _, _ = independence_metropolis(lw, uniforms)
        return {"eval_ess": ess(lw), "eval_log_z": _log_mean_exp(lw),
                "eval_acceptance": float(accepted[1:].mean()) if len(lw) > 1 else None,
                "eval_loss": -float(lw.mean())}

    # ------------------------------------------------------------------ the loop
    def run(self, until: int | None = None, *, started: float | None = None) -> TrainResult:
        """Train to ``train.steps`` (or only to step ``until``), checkpoint, plot.
        ``started``: the ``time.perf_counter()`` from which ``train.walltime`` counts in this
        process (default: now; :func:`prepare_training` gives its first stage's start)."""
        tc, comm = self.tc, self.comm
        if not self.params:  # nothing to train (annealing): a step-0 checkpoint for `sample`
            self.ctx.log.info(f"sampler.kind {self.cfg.sampler.kind} has no parameters: nothing "
                              f"to train; sample it with hpcflow sample {self.run_dir}")
            if not self.step:
                self.checkpoint()
            return TrainResult(step=self.step, reason="done", last={})
        last_step = tc.steps if until is None else min(until, tc.steps)
        t_start = time.perf_counter()
        # the job's start-up (modules, imports, model build) and earlier stages count
        # against its walltime
        spent = max(job_elapsed(), t_start - started if started is not None else 0.0)
        self._t_start, self._walltime = t_start, tc.walltime_seconds() - spent
        self._stop_reason = ""
        check_every = self.cfg.distributed.check_every
        previous = self._install_signal_handlers()
        progress = self.ctx.progress(tc.steps, initial=self.step, desc=self.label, unit="step")
        reason = "done"
        try:
            while self.step < last_step:
                t0 = time.perf_counter()
                rec = self.train_step()
                if tc.eval_every and (self.step % tc.eval_every == 0 or self.step == tc.steps):
                    rec.update(self.evaluate())
                dt = time.perf_counter() - t0
                self.max_step_time = max(self.max_step_time, dt)
                now = time.perf_counter() - t_start
                rec.update(time=self.elapsed_before + now, step_time=dt,
                           samples_per_s=tc.batch_size / dt)
                self._last = rec
                if self.bad_steps > tc.max_bad_steps:
                    path = self.checkpoint()
                    raise HpcflowError(
                        f"training diverged: {self.bad_steps} consecutive bad steps (the "
                        f"last: {self.bad_reason}; train.max_bad_steps = "
                        f"{tc.max_bad_steps}); the last good state is in {path}; lower "
                        f"train.lr, set train.grad_clip or use model.dtype: float64")
                if comm.is_root and (self.step % tc.log_every == 0 or self.step == tc.steps
                                     or "eval_ess" in rec):
                    self.metrics.write(rec)
                    if self.tensorboard is not None:
                        self.tensorboard.write(rec)
                progress.update(1, line=_progress_line(rec, tc.steps), force="eval_ess" in rec,
                                loss=f"{rec['loss']:.3f}", ess=f"{rec['ess']:.3f}")
                if self._stop_reason:  # decided in the step's collective: the same on all ranks
                    reason = self._stop_reason
                    break
                if self.step % tc.checkpoint_every == 0 and self.step < last_step:
                    self.checkpoint()  # checks the replicas too
                elif check_every and self.step % check_every == 0:
                    self._check_replicas()
            self.checkpoint()
        finally:
            progress.close()
            self._restore_signal_handlers(previous)
            if comm.is_root:
                self.metrics.close()
                if self.tensorboard is not None:
                    self.tensorboard.close()
        if reason != "done":
            self.ctx.log.info(f"stopped at step {self.step} ({reason}); run the same command "
                              f"again to resume")
        if comm.is_root and tc.plot:
            try:
                plot_training(self.run_dir)
            except ImportError:
                self.ctx.log.info("training.png not drawn: matplotlib is missing "
                                  "(pip install 'hpcflow[plot]')")
        return TrainResult(step=self.step, reason=reason, last=self._last)

    def _stop_votes(self) -> torch.Tensor:
        """This rank's vote for each of ``_STOP_REASONS`` (``[n]`` float64, 1 or 0): a stop
        signal received, or too little wall time left for the rest of this step and a
        checkpoint (margin: two of the longest steps and checkpoints so far, plus 5 s; only
        rank 0 knows the checkpoint time, the clocks of the ranks differ a little). The step's
        collective sums the votes over ranks: exact small integers, the same on every rank,
        so every rank takes the same decision (:func:`_stop_reason`)."""
        votes = torch.zeros(len(_STOP_REASONS), dtype=torch.float64)
        margin = 2 * self.max_step_time + 2 * self.ckpt_time + 5.0
        if time.perf_counter() - self._t_start + margin > self._walltime:
            votes[_STOP_REASONS.index("walltime")] = 1.0
        if self._signal > 0:
            name = signal.Signals(self._signal).name
            if name in _STOP_REASONS:
                votes[_STOP_REASONS.index(name)] = 1.0
        return votes

    def _check_replicas(self) -> None:
        """Every rank holds rank 0's parameters, optimizer state and parameter average
        afterwards (one collective; broadcasts only if some rank differed, logged)."""
        average = self.average.tensors if self.average is not None else ()
        if not self.comm.check_replicas_(self.model, self.optimizer, extra=average):
            self.ctx.log.warning(
                f"step {self.step}: ranks held different parameters, optimizer state or "
                f"parameter average; rank 0's were broadcast to all (repair "
                f"{self.comm.repairs})")

    def checkpoint(self) -> Path | None:
        """Rank 0 writes the full training state; all ranks wait for it in the check that
        they hold the same state (:meth:`_check_replicas`)."""
        path = None
        if self.comm.is_root:
            t0 = time.perf_counter()
            payload = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                "config": self.cfg.to_dict(),
                "average": self.average.state_dict() if self.average is not None else {},
                "trainer": {"skipped": self.skipped,
                            "elapsed": self._last.get("time", self.elapsed_before)},
            }
            path = save_checkpoint(self.checkpoint_dir, self.step, payload)
            prune_checkpoints(self.checkpoint_dir, self.tc.keep_checkpoints)
            self.ckpt_time = max(self.ckpt_time, time.perf_counter() - t0)
        self._check_replicas()
        return path

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        previous = {}

        def handler(signum, frame):
            self._signal = signum

        for name in _STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    previous[sig] = signal.signal(sig, handler)
                except ValueError:  # not the main thread
                    pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)


def prepare_training(cfg, ctx: RunContext) -> tuple[Trainer | None, float]:
    """The trainer of ``hpcflow train`` and the ``time.perf_counter()`` from which its
    ``train.walltime`` counts. With ``train.pretrain``, the first stage runs here: training
    on the smaller lattice (:func:`~hpcflow.app.config.pretrain_config`) in
    ``RUN_DIR/pretrain``, whose trained flow then starts ``cfg``'s training. Both resume: a
    run with checkpoints of its own skips the first stage, a finished first stage is not run
    again, and the walltime counts from the first stage's start. ``None`` for the trainer
    when the first stage stopped early (walltime, signal): the same command resumes it."""
    small = pretrain_config(cfg)
    started = time.perf_counter()
    source = None
    if small is not None:
        pre_dir = ctx.run_dir / "pretrain"
        found = ((list_checkpoints(ctx.run_dir / "checkpoints"),
                  list_checkpoints(pre_dir / "checkpoints")) if ctx.comm.is_root else None)
        own, pre = ctx.comm.broadcast_object(found)  # rank 0 looks, every rank decides alike
        if not own:
            source = pre_dir
            if not pre or pre[-1][0] < small.train.steps:
                shape = "x".join(map(str, small.lattice.shape))
                ctx.log.info(f"first stage: {small.train.steps} steps on {shape} in {pre_dir}")
                pre_trainer = Trainer(small, ctx, run_dir=pre_dir, label="pretrain")
                if pre_trainer.run(started=started).reason != "done":
                    return None, started
    return Trainer(cfg, ctx, init_from=source), started


def _stop_reason(votes) -> str:
    """The reason to stop from the summed votes of ``_STOP_REASONS`` (ranks voting for
    each): the first with a vote, ``""`` when none has one."""
    for name, n in zip(_STOP_REASONS, votes, strict=True):
        if n > 0:
            return name if name == "walltime" else f"signal {name}"
    return ""


def _progress_line(rec: dict, total: int) -> str:
    """The log line of a training step: loss, ESS, rate, time, and the evaluation if any."""
    extra = ""
    if rec.get("eval_acceptance") is not None:
        extra = f" eval_ess {rec['eval_ess']:.4f} acc {rec['eval_acceptance']:.3f}"
    return (f"step {rec['step']:>7}/{total} loss {rec['loss']:+.4f} ess {rec['ess']:.4f} "
            f"lr {rec['lr']:.2e} {rec['time']:8.1f}s{extra}")


def _log_mean_exp(log_w: np.ndarray) -> float:
    """``log mean w`` from ``log w``: the batch estimate of ``log Z``."""
    return logsumexp(log_w) - math.log(len(log_w))


# ---------------------------------------------------------------------------------- dry run
class MemoryProbe:
    """Memory of this process on ``device``: bytes allocated by torch on a GPU (CUDA, XPU),
    the resident set size (``/proc/self/status``) on the CPU. ``reset_peak`` starts a new
    peak (on Linux by writing 5 to ``/proc/self/clear_refs``, which resets ``VmHWM``)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.accel = getattr(torch, self.device.type, None) if self.device.type != "cpu" else None

    @staticmethod
    def _status_kb(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{field} missing from /proc/self/status")

    def current(self) -> int:
        if self.accel is not None:
            self.accel.synchronize(self.device)
            return int(self.accel.memory_allocated(self.device))
        return self._status_kb("VmRSS")

    def reset_peak(self) -> None:
        if self.accel is not None:
            self.accel.synchronize(self.device)
            self.accel.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # old kernel or not Linux: the peak stays the process's lifetime peak
            pass

    def peak(self) -> int:
        if self.accel is not None:
            self.accel.synchronize(self.device)
            return int(self.accel.max_memory_allocated(self.device))
        return self._status_kb("VmHWM")


def _measure(probe: MemoryProbe, fn) -> tuple[float, int]:
    """(seconds, peak bytes above the memory before) of ``fn()``."""
    import gc

    gc.collect()
    before = probe.current()
    probe.reset_peak()
    t0 = time.perf_counter()
    fn()
    if probe.accel is not None:
        probe.accel.synchronize(probe.device)
    seconds = time.perf_counter() - t0
    return seconds, max(probe.peak() - before, 0)


def dry_run(cfg, ctx: RunContext, ranks: int | None = None) -> dict:
    """Validate ``cfg`` for ``ranks`` ranks (default: the ranks running), build the model on
    this rank's device, run one training micro-batch forward and backward (after one warm-up
    sample and optimizer step, so that gradients and optimizer state exist as in training),
    and one evaluation forward; return the figures that :func:`format_dry_run` prints.

    Memory per rank = ``base`` (runtime, model, gradients, optimizer state) + the larger of
    the training peak (``per_sample`` x micro-batch) and the evaluation peak; seconds per step
    = micro-batch time x micro-batches per step (communication and evaluation not included).
    Nothing is written."""
    tc = cfg.train
    ranks = ranks or ctx.size
    for key in ("batch_size", "eval_batch_size"):
        if getattr(tc, key) % ranks and (key == "batch_size" or tc.eval_every):
            raise ConfigError(f"train.{key}", f"the global batch {getattr(tc, key)} does not "
                              f"split evenly over {ranks} ranks")
    local = tc.batch_size // ranks
    micro = min(tc.micro_batch_size or local, local)
    eval_local = tc.eval_batch_size // ranks if tc.eval_every else 0
    eval_micro = min(tc.micro_batch_size or eval_local, eval_local)
    device = ctx.device
    probe = MemoryProbe(device)
    torch.manual_seed(model_seed(tc.seed))
    model = build_model(cfg).to(device)
    model.recompute = tc.recompute_layers
    params = [p for p in model.parameters() if p.requires_grad]
    report = {"config": cfg.lattice.group + " " + "x".join(map(str, cfg.lattice.shape)),
              "device": str(device), "parameters": sum(p.numel() for p in params),
              "global_batch": tc.batch_size, "ranks": ranks, "local_batch": local,
              "micro_batch": micro, "micro_batches_per_step": -(-local // micro),
              "eval_micro_batch": eval_micro}
    if not params:
        raise HpcflowError(f"sampler.kind {cfg.sampler.kind} has no parameters: nothing to "
                           f"train (and nothing to estimate)")
    action = build_action(cfg)
    s = cfg.sampler
    start = (StartEnsemble(s.start, cfg.lattice.group, cfg.lattice.shape, s.beta_start)
             if s.kind != "flow" and s.beta_start > 0 else None)
    optimizer = build_optimizer(params, tc)
    path = tc.gradient == "path"

    def train_pass(indices):
        propose(model, action, indices, seed=tc.seed, stream=STREAM_TRAIN, step=0,
                train=True, path=path, start=start, backward_scale=1 / len(indices))

    kept = []  # train.ema: the average's copy of the parameters counts in the base

    def warm_up():
        optimizer.zero_grad(set_to_none=False)
        train_pass(range(1))
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if tc.ema > 0:
            kept.append(ParameterAverage.of(model, tc.ema))

    def eval_pass(n):
        with torch.no_grad():
            propose(model, action, range(n), seed=tc.seed, stream=STREAM_EVAL, step=0,
                    start=start)

    report["warmup_s"], _ = _measure(probe, warm_up)
    report["base_bytes"] = probe.current()
    seconds, peak = _measure(probe, lambda: train_pass(range(micro)))
    report["micro_batch_s"] = seconds
    report["per_sample_bytes"] = peak / micro
    eval_peak = 0.0
    if eval_micro:
        n = min(eval_micro, 2)
        _, eval_peak_n = _measure(probe, lambda: eval_pass(n))
        report["eval_per_sample_bytes"] = eval_peak_n / n
        eval_peak = eval_peak_n / n * eval_micro
    report["per_rank_bytes"] = report["base_bytes"] + max(peak, eval_peak)
    report["step_s"] = seconds * report["micro_batches_per_step"]
    report["steps_per_hour"] = 3600.0 / report["step_s"] if report["step_s"] > 0 else math.inf
    return report


def format_dry_run(r: dict) -> list[str]:
    """The lines ``hpcflow train --dry-run`` prints for a :func:`dry_run` report."""
    gb = 1e9
    lines = [
        f"dry run: {r['config']}, device {r['device']}, {r['parameters']} parameters",
        f"global batch {r['global_batch']} = {r['ranks']} rank(s) x {r['local_batch']} "
        f"samples, in {r['micro_batches_per_step']} micro-batch(es) of {r['micro_batch']}",
        f"memory: {r['per_sample_bytes'] / gb:.3f} GB per training sample; base "
        f"{r['base_bytes'] / gb:.3f} GB (runtime, model, gradients, optimizer state)",
    ]
    if r.get("eval_per_sample_bytes") is not None:
        lines.append(f"evaluation: {r['eval_per_sample_bytes'] / gb:.3f} GB per sample, "
                     f"micro-batch {r['eval_micro_batch']}")
    lines += [
        f"peak memory per rank (estimate): {r['per_rank_bytes'] / gb:.2f} GB",
        f"time: {r['micro_batch_s']:.3f} s per micro-batch, {r['step_s']:.3f} s per step, "
        f"{r['steps_per_hour']:.0f} steps per hour (communication and evaluation not "
        f"included)",
    ]
    return lines
