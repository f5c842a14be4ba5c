"""Operator count and step time of the flow, side by side with an earlier revision in one run.

For each configuration: the ATen operator calls of one forward + backward pass at batch 1 (the
reparameterized reverse-KL loss), counted two ways: every `aten::` event `torch.profiler`
records (nested calls included, as in the issue's figures) and the top-level calls a
`TorchDispatchMode` sees (closer to kernel launches); then the median time of a batch-64
training step (the loss of the configuration's `train.gradient`, backward, and the step of
the optimizer the code's training builds, `hpcflow.app.optim.build_optimizer`) in eager
mode, the peak of its live tensors (profiler memory events, beyond what was alive before the
step), and with `--compile` the same step with the coupling layers compiled
(`GaugeFlow.compile_layers`, config key `distributed.compile`); its profiler count is the
``aten::`` events left plus every generated kernel run (inductor's `cpp.enable_kernel_profile`).
One thread throughout.

`--baseline REV` extracts `hpcflow/` of git revision `REV` into a temporary folder and measures
it in a subprocess on the same prior links and parameters, so the table compares both codes on
one machine in one run. Both codes also run the flow in float64 (same parameters, same links):
the last column is the largest difference of `log q` (the issue asks for 1e-10).

`--paired N` (with `--baseline`) times the codes once more in lockstep: one resident worker
per code, warmed up, each asked in turn (orders ABBA ...) for two steps, of which the second
is timed (a training step follows a step of the same code), N each; the
"paired" column is the median of the N per-pair ratios (quartiles in the JSON). This VM's
speed drifts by ~20% within minutes, which a round of a few steps per code, seconds apart,
passes straight into its ratio; steps taken alternately see the same drift.

    python perf/bench_ops.py [--configs configs/u1_2d.yaml ...] [--baseline 942f697] \
        [--batch 64] [--repeats 5] [--rounds 3] [--paired 30] [--compile]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["configs/u1_2d.yaml", "configs/u1_3d.yaml", "configs/su3_4d.yaml"]


def _count_dispatch(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        fn()
    return sum(c.n.values())


def _count_profiler(fn) -> int:
    """``aten::`` events, plus the kernels inductor generated (compiled path; their names hold
    ``cpp_fused``, recorded with ``cpp.enable_kernel_profile``) and the fused spline kernel's
    operators (``hpcflow::``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events()
               if e.name.startswith(("aten::", "hpcflow::")) or "cpp_fused" in e.name)


def _peak_tensor_mib(fn) -> float | None:
    """The largest total size of live tensors during ``fn()`` beyond those alive before it,
    MiB: allocations and frees in the order ``torch.profiler`` (``profile_memory``) records
    them (kineto's event list, where every allocation is one event). Unlike the process's
    peak resident memory, this does not depend on what the allocator keeps after a free. Frees
    of tensors allocated before ``fn`` are not recorded (no size is known), so where ``fn``
    frees such tensors the figure is an upper bound.
    ``None`` where the profiler does not expose the list."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for e in events:
            live += e.nbytes()
            peak = max(peak, live)
    except AttributeError:
        return None
    return peak / 2**20


def measure(config: str, batch: int, repeats: int, compiled: bool, state: str | None,
            overrides: list[str], count: bool = True, serve: bool = False) -> dict:
    """Worker: counts and times for one configuration with the code on ``sys.path``
    (``repeats = 0``: only ``log q`` of the batch, for the float64 comparison). ``serve``:
    warm up, print ``ready``, then for each ``step`` line read from stdin take two steps and
    print the second's milliseconds on a line, until stdin closes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import time_it

    from hpcflow import build_action, build_model, load_config
    from hpcflow.app.propose import path_log_prob

    torch.set_num_threads(1)
    cfg = _load_known(load_config, ROOT / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    if compiled:
        import torch._inductor.config as inductor

        inductor.cpp.enable_kernel_profile = True  # each generated kernel shows in the profiler
        model.compile_layers()
    if state and Path(state).exists():
        model.load_state_dict(torch.load(state))
    else:
        with torch.no_grad():  # a generic (non-identity) flow
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        if state:
            torch.save(model.state_dict(), state)
    action = build_action(cfg)
    path = cfg.train.gradient == "path"
    group = model.group
    gen = torch.Generator().manual_seed(1234)
    noise = group.noise((len(model.shape), *model.shape), dtype=model.complex_dtype,
                        generator=gen)
    z1 = group.from_noise(noise.unsqueeze(0))
    zb = group.from_noise(torch.stack([group.noise((len(model.shape), *model.shape),
                                                   dtype=model.complex_dtype, generator=gen)
                                       for _ in range(batch)]))
    try:  # the code's own optimizer, as its training builds it (at a tiny rate)
        from hpcflow.app.optim import build_optimizer

        optimizer = build_optimizer(model.parameters(), cfg.train)
        for group in optimizer.param_groups:
            group["lr"] = 1e-6
    except ImportError:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    keeping = getattr(model, "forward_keeping_contexts", None)  # absent in older codes

    def loss_of(z):  # as hpcflow.app.propose.propose builds the training objective
        if path and keeping is not None:
            u, _, contexts = keeping(z)
            return (path_log_prob(model, u, contexts) + action(u)).mean()
        u, logdet = model(z)
        if path:
            return (path_log_prob(model, u) + action(u)).mean()
        return (action(u) - logdet).mean()

    def step1():  # the flow's forward + backward (reparameterized loss), as the issue counts
        u, logdet = model(z1)
        (action(u) - logdet).mean().backward()

    def step_b():
        optimizer.zero_grad()
        loss_of(zb).backward()
        optimizer.step()

    if serve:
        import time

        for _ in range(3):
            step_b()
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            step_b()  # untimed: the timed step follows a step, as in training, not the other
            start = time.perf_counter()  # code's step (which leaves other data in the caches)
            step_b()
            print(f"{(time.perf_counter() - start) * 1e3:.3f}", flush=True)
        return {}
    with torch.no_grad():
        log_q = (-model(zb)[1]).tolist()
    if repeats == 0:
        return {"log_q": log_q}
    step1()  # warm-up (and compilation)
    # a compiled step runs generated kernels, which no dispatch mode sees: profiler count only
    n_dispatch = None if compiled or not count else _count_dispatch(step1)
    n_profiler = _count_profiler(step1) if count else None
    t = time_it(step_b, torch.device("cpu"), repeats=repeats, warmup=2)
    optimizer.zero_grad()  # old gradients freed before, not during, the profiled step
    peak = _peak_tensor_mib(lambda: (loss_of(zb).backward(), optimizer.step())) if count else None
    import hpcflow
    return {"config": config, "code_path": str(Path(hpcflow.__file__).parent),
            "gradient": cfg.train.gradient, "dtype": cfg.model.dtype,
            "ops_profiler": n_profiler, "ops_dispatch": n_dispatch,
            "step_ms": t["median_ms"], "peak_mib": peak, "batch": batch, "log_q": log_q}


def _load_known(load_config, path: Path, overrides: list[str]):
    """``load_config`` of the code being measured, leaving out the keys of the file that an
    older revision does not know yet (training-only keys such as ``train.ema``, added after
    it: they do not change the flow or the step measured here)."""
    import yaml

    from hpcflow.errors import ConfigError

    data = yaml.safe_load(path.read_text())
    for _ in range(20):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(data, f)
        try:
            return load_config(f.name, overrides)
        except ConfigError as err:
            section, _, key = err.key.partition(".")
            if "unknown key" not in str(err) or key not in data.get(section, {}):
                raise
            print(f"{path.name}: {err.key} left out (unknown to this code)", file=sys.stderr)
            del data[section][key]
        finally:
            os.unlink(f.name)
    raise SystemExit(f"{path}: too many unknown keys")


def _run_worker(code_root: Path, args, config: str, compiled: bool, state: str,
                float64: bool = False, count: bool = True, overrides: tuple = ()) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", "--configs", config, "--state", state,
           "--batch", str(8 if float64 else args.batch), "--repeats",
           str(0 if float64 else args.repeats)] + (["--compile"] if compiled else [])
    cmd += ["--set", "model.dtype=float64"] if float64 else []
    cmd += [] if count else ["--no-count"]
    for item in overrides:
        cmd += ["--set", item]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"worker failed for {config} ({code_root}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _paired(codes: list, args, config: str, state: str) -> list[list[float]]:
    """Step times (ms) of every code taken in lockstep by resident workers (``--paired``):
    ``args.paired`` steps each, the order of the codes reversed every other turn. A worker
    that fails stops the run with the tail of its error output."""
    workers, logs = [], []

    def failed(j: int, what: str) -> SystemExit:
        w, log = workers[j], logs[j]
        log.flush()
        tail = Path(log.name).read_text(errors="replace")[-3000:]
        return SystemExit(f"paired worker for {config} ({codes[j][0]}) {what} "
                          f"(exit status {w.poll()}):\n{tail}")

    try:
        for _name, root, compiled, over in codes:
            env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "--worker", "--serve", "--configs", config,
                   "--state", state, "--batch", str(args.batch)]
            cmd += ["--compile"] if compiled else []
            for item in over:
                cmd += ["--set", item]
            logs.append(tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="paired-"))
            workers.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=logs[-1],
                                            text=True))
        for j, w in enumerate(workers):
            for line in w.stdout:
                if line.strip() == "ready":
                    break
            else:
                raise failed(j, "exited before it was ready")
        times: list[list[float]] = [[] for _ in workers]
        for turn in range(args.paired):
            order = range(len(workers)) if turn % 2 == 0 else reversed(range(len(workers)))
            for j in order:
                try:
                    workers[j].stdin.write("step\n")
                    workers[j].stdin.flush()
                    line = workers[j].stdout.readline()
                except OSError:
                    line = ""
                if not line.strip():
                    raise failed(j, f"stopped at paired step {turn}")
                times[j].append(float(line))
        return times
    finally:
        for w in workers:
            try:
                w.stdin.close()
            except OSError:  # a worker that died: its pipe is broken
                pass
        for w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        for log in logs:
            log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT)
    p.add_argument("--baseline", default=None, help="git revision to compare with")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time the compiled path")
    p.add_argument("--rounds", type=int, default=3,
                   help="time every code this many times, in turn (the VM's speed drifts by "
                        "~20%% over minutes); the table gives the median")
    p.add_argument("--torch-splines", action="store_true",
                   help="also measure this tree with distributed.splines=torch (the splines as "
                        "tensor operations instead of the fused kernel)")
    p.add_argument("--torch-kernels", action="store_true",
                   help="also measure this tree with every fused CPU kernel off "
                        "(distributed.splines=torch, distributed.kernels=torch)")
    p.add_argument("--paired", type=int, default=0,
                   help="with --baseline: then this many timed steps of each code in lockstep "
                        "(resident workers, two steps each in turn, the second timed); the "
                        "median of the per-pair ratios")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-count", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="perf/out/bench_ops.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--state", default=None, help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = measure(args.configs[0], args.batch, args.repeats, args.compile,
                         args.state, args.set, count=not args.no_count, serve=args.serve)
        if not args.serve:
            print(json.dumps(result))
        return
    if args.paired < 0 or (args.paired and not args.baseline):
        p.error("--paired: a count >= 0, with --baseline")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, print_table, write_json

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_root = None
        if args.baseline:
            base_root = Path(tmp) / "baseline"
            base_root.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline, "hpcflow"], cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base_root)], input=archive, check=True)
        for i, config in enumerate(args.configs):
            state = str(Path(tmp) / f"state{i}.pt")
            codes = ([("baseline " + args.baseline, base_root, False, ())] if base_root else [])
            codes += [("this tree", ROOT, False, ())]
            codes += ([("this tree, torch splines", ROOT, False, ("distributed.splines=torch",))]
                      if args.torch_splines else [])
            codes += ([("this tree, torch kernels", ROOT, False,
                        ("distributed.splines=torch", "distributed.kernels=torch"))]
                      if args.torch_kernels else [])
            codes += [("this tree, compiled", ROOT, True, ())] if args.compile else []
            runs = [(name, _run_worker(root, args, config, compiled, state, overrides=over))
                    for name, root, compiled, over in codes]
            for _ in range(args.rounds - 1):  # the codes in turn again: times only
                for (_name, root, compiled, over), (_, r) in zip(codes, runs, strict=True):
                    r.setdefault("step_ms_rounds", [r["step_ms"]]).append(_run_worker(
                        root, args, config, compiled, state, count=False,
                        overrides=over)["step_ms"])
            ref_rounds = runs[0][1].get("step_ms_rounds", [runs[0][1]["step_ms"]])
            for _, r in runs:  # a round's ratio compares codes timed minutes apart, not hours
                rounds = r.get("step_ms_rounds", [r["step_ms"]])
                r["speedup_rounds"] = [a / b for a, b in zip(ref_rounds, rounds, strict=True)]
                r["step_ms"] = statistics.median(rounds)
            if args.paired:
                times = _paired(codes, args, config, state)
                for (_, r), t in zip(runs, times, strict=True):
                    ratios = [a / b for a, b in zip(times[0], t, strict=True)]
                    quart = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                    r.update(step_ms_paired=statistics.median(t), speedup_paired=statistics.median(
                        ratios), speedup_paired_quartiles=[quart[0], quart[-1]])
            # the same flow in float64 (its own parameters): log q of both codes to 1e-10
            state64 = str(Path(tmp) / f"state{i}-f64.pt")
            q64 = [_run_worker(root, args, config, False, state64, float64=True)["log_q"]
                   for root in ([base_root] if base_root is not None else []) + [ROOT]]
            ref = runs[0][1]
            for (name, r), (_, _, _, over) in zip(runs, codes, strict=True):
                dq = max(abs(a - b) for a, b in zip(r["log_q"], ref["log_q"], strict=True))
                counted = r["ops_dispatch"] is not None
                rows.append({**{k: v for k, v in r.items() if k != "log_q"}, "code": name,
                             "ops_ratio": ref["ops_profiler"] / r["ops_profiler"],
                             "dispatch_ratio": ref["ops_dispatch"] / r["ops_dispatch"]
                             if counted else None,
                             "speedup": ref["step_ms"] / r["step_ms"],
                             "speedup_round": statistics.median(r["speedup_rounds"]),
                             "max_dlogq": dq,
                             # float64: this tree's default path against the baseline only
                             "max_dlogq_f64": None if over else max(
                                 abs(a - b) for a, b in zip(q64[-1], q64[0], strict=True))})
    print_table(rows, [("config", "config", ""), ("code", "code", ""),
                       ("gradient", "gradient", ""), ("ops_profiler", "aten ops (profiler)", "d"),
                       ("ops_dispatch", "aten ops (dispatch)", "d"),
                       ("ops_ratio", "fewer x (profiler)", ".2f"),
                       ("dispatch_ratio", "fewer x (dispatch)", ".2f"),
                       ("step_ms", f"step ms (batch {args.batch})", ".1f"),
                       ("speedup", "speed-up x", ".2f"),
                       ("speedup_round", "median of rounds' x", ".2f"),
                       ("speedup_paired", "paired x", ".2f"),
                       ("peak_mib", "step's peak tensors MiB", ".1f"),
                       ("max_dlogq", "max |d log q|", ".1e"),
                       ("max_dlogq_f64", "float64", ".1e")])
    print(f"wrote {write_json(args.out, {'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()
