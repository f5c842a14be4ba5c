"""Training: reproducibility, checkpoint/restart (also after kill -9), refusals, bad steps."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpcflow import ConfigError, HpcflowError, InputFileError, load_config, load_model
from hpcflow.app.metrics import read_metrics
from hpcflow.app.optim import ParameterAverage, build_optimizer, ema_decay
from hpcflow.app.train import Trainer
from hpcflow.distributed import NoneComm
from hpcflow.io.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from tests.helpers import TINY_U1, clean_env, perturb, run_ctx

ROOT = Path(__file__).resolve().parents[2]
TINY = TINY_U1


def train(run_dir, *extra, until=None):
    cfg = load_config(None, TINY + list(extra))
    trainer = Trainer(cfg, run_ctx(run_dir))
    return trainer, trainer.run(until=until)


def final_params(run_dir):
    return load_model(run_dir).state_dict()


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics_without_time(run_dir):
    keep = ("step", "loss", "ess", "lr", "grad_norm", "eval_ess", "eval_acceptance")
    return [{k: r.get(k) for k in keep} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    _, r1 = train(tmp_path / "a")
    _, r2 = train(tmp_path / "b")
    _, r3 = train(tmp_path / "c", "train.seed=1")
    m1, m2, m3 = (metrics_without_time(tmp_path / d) for d in "abc")
    assert len(m1) == 12 and m1 == m2
    assert [r["loss"] for r in m1] != [r["loss"] for r in m3]
    assert r1.step == 12 and r1.reason == "done"
    # the loss goes down: training does something
    assert m1[-1]["loss"] < m1[0]["loss"]
    rec = read_metrics(tmp_path / "a" / "metrics.jsonl")[0]
    for key in ("step", "loss", "ess", "lr", "time"):
        assert key in rec


def test_resume_continues_to_identical_parameters(tmp_path):
    train(tmp_path / "full")
    train(tmp_path / "part", until=7)  # stops at 7 (checkpoint at the end)
    assert [s for s, _ in list_checkpoints(tmp_path / "part" / "checkpoints")][-1] == 7
    _, res = train(tmp_path / "part")           # same command, more steps: resumes
    assert res.step == 12
    assert same_state(final_params(tmp_path / "full"), final_params(tmp_path / "part"))
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "part")


def test_parameter_average_follows_its_rule_and_swaps_in_and_out():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    avg = ParameterAverage([("w", w)], decay=0.9)
    expect = w.detach().clone()
    for step, value in enumerate(([3.0, 0.0], [0.5, 4.0], [-1.0, 1.0]), start=1):
        with torch.no_grad():
            w.copy_(torch.tensor(value))
        avg.update(step)
        d = ema_decay(step, 0.9)
        expect = d * expect + (1 - d) * w.detach()
        assert torch.allclose(avg.tensors[0], expect, rtol=0, atol=1e-15)
    assert ema_decay(1, 0.9) == 2 / 11 and ema_decay(10**6, 0.9) == 0.9
    with avg.applied():
        assert torch.equal(w.detach(), avg.tensors[0])
    assert w.tolist() == [-1.0, 1.0]  # restored
    other = ParameterAverage([("w", w)], decay=0.9)
    other.load_state_dict(avg.state_dict())
    assert torch.equal(other.tensors[0], avg.tensors[0])
    with pytest.raises(ValueError, match="without: w"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="of unknown parameters: v"):
        other.load_state_dict({**avg.state_dict(), "v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"with other shapes: w \(1,\)"):
        other.load_state_dict({"w": torch.zeros(1)})  # copy_ alone would broadcast it
    assert torch.equal(other.tensors[0], avg.tensors[0])  # unchanged by the refusals


def test_moving_average_resumes_identically_and_is_what_is_sampled(tmp_path):
    """With ``train.ema``: an interrupted run resumes to the same parameters, average and
    metrics; evaluations measure the average; ``load_model`` (``hpcflow sample``) gives the
    average, not the raw parameters, which the checkpoint also keeps."""
    trainer, _ = train(tmp_path / "full", "train.ema=0.8")
    train(tmp_path / "part", "train.ema=0.8", until=7)
    train(tmp_path / "part", "train.ema=0.8")
    sampled = final_params(tmp_path / "full")
    assert same_state(sampled, final_params(tmp_path / "part"))
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "part")
    raw = trainer.model.state_dict()
    averaged = trainer.average.state_dict()
    assert averaged and all(torch.equal(sampled[k], v) for k, v in averaged.items())
    assert any(not torch.equal(raw[k], v) for k, v in averaged.items())
    # the evaluation of the last step is of the average: the same numbers again with it
    last_eval = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl")
                 if "eval_ess" in r][-1]
    again = trainer.evaluate()
    assert again["eval_ess"] == last_eval["eval_ess"]
    with trainer.average.applied():
        trainer.average = None
        assert trainer.evaluate()["eval_ess"] == last_eval["eval_ess"]
    assert torch.equal(trainer.model.state_dict()[next(iter(averaged))],
                       raw[next(iter(averaged))])  # parameters restored after the block
    # a stochastic flow whose layers share one stout schedule (one parameter, one entry in
    # the average, an entry per layer in the state dict): the average is sampled all the same
    snf, _ = train(tmp_path / "snf", "train.ema=0.8", "sampler.kind=snf", "sampler.steps=4",
                   "sampler.knots=2", "train.steps=6")
    shared = snf.average.state_dict()
    loaded = load_model(tmp_path / "snf")
    entries = {k: v for k, v in loaded.state_dict().items() if k.endswith("schedule.p")}
    assert len(shared) == 1 and len(entries) == 4  # one per protocol step's layer
    for name, value in entries.items():
        assert torch.equal(value, next(iter(shared.values()))), name
    assert not torch.equal(next(iter(shared.values())), next(iter(snf.model.parameters())))
    # without ema the checkpoint holds no average, and the raw parameters are sampled
    plain, _ = train(tmp_path / "plain")
    assert plain.average is None
    assert same_state(final_params(tmp_path / "plain"), plain.model.state_dict())


def test_a_checkpoint_with_a_foreign_average_is_refused_naming_it(tmp_path):
    train(tmp_path / "run", "train.ema=0.8", "train.steps=3")
    ckpt = load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    payload = {k: v for k, v in ckpt.items() if k not in ("path", "format", "step")}
    payload["average"] = {"nonexistent.weight": torch.zeros(1)}
    save_checkpoint(tmp_path / "run" / "checkpoints", 99, payload)
    with pytest.raises(InputFileError, match=r"step-00000099\.pt: .*nonexistent\.weight"):
        load_model(tmp_path / "run")
    del payload["average"]["nonexistent.weight"]  # one without the model's entries:
    payload["average"][next(iter(ckpt["average"]))] = next(iter(ckpt["average"].values()))
    save_checkpoint(tmp_path / "run" / "checkpoints", 100, payload)
    for use in (lambda: load_model(tmp_path / "run"),  # sample and resume refuse it
                lambda: train(tmp_path / "run", "train.ema=0.8", "train.steps=200")):
        with pytest.raises(InputFileError, match=r"step-00000100\.pt: parameter average "
                                                 r"without"):
            use()
    name = next(iter(ckpt["average"]))  # an entry of another shape, in either place
    payload["average"] = {**ckpt["average"], name: torch.zeros(1)}
    save_checkpoint(tmp_path / "run" / "checkpoints", 101, payload)
    for use in (lambda: load_model(tmp_path / "run"),
                lambda: train(tmp_path / "run", "train.ema=0.8", "train.steps=200")):
        with pytest.raises(InputFileError, match=r"step-00000101\.pt: .*other shapes"):
            use()
    payload["average"] = {**ckpt["average"], "bogus.weight": torch.zeros(1)}
    save_checkpoint(tmp_path / "run" / "checkpoints", 102, payload)
    with pytest.raises(InputFileError, match=r"step-00000102\.pt: .*unknown.*bogus"):
        train(tmp_path / "run", "train.ema=0.8", "train.steps=200")  # resume, as sample


def test_one_trainer_runs_in_stages(tmp_path):
    """``run(until=)`` twice on the same trainer (a notebook's use) continues the metrics file."""
    train(tmp_path / "full")
    trainer, first = train(tmp_path / "staged", until=5)
    second = trainer.run()
    assert (first.step, second.step) == (5, 12)
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "staged")


def test_corrupt_newest_checkpoint_falls_back(tmp_path):
    train(tmp_path / "full")
    run = tmp_path / "r"
    train(run, until=9)
    ckpts = list_checkpoints(run / "checkpoints")
    newest = ckpts[-1][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    warnings = []
    cfg = load_config(None, TINY)
    trainer = Trainer(cfg, run_ctx(run, messages=warnings))
    assert trainer.step == ckpts[-2][0]
    assert any("skipping unreadable checkpoint" in w for w in warnings)
    trainer.run()
    assert same_state(final_params(tmp_path / "full"), final_params(run))


def test_incompatible_config_is_refused(tmp_path):
    train(tmp_path / "r", "train.steps=3")
    with pytest.raises(HpcflowError, match="model.layers"):
        train(tmp_path / "r", "model.layers=16")
    with pytest.raises(HpcflowError, match="lattice.shape"):
        train(tmp_path / "r", "lattice.shape=[8, 8]")
    train(tmp_path / "r", "train.steps=5", "train.lr=0.001")  # training keys may change


def test_init_from_starts_a_larger_lattice_from_the_trained_average(tmp_path):
    """Volume transfer (``train.init_from``): the 8x8 run starts from the 4x4 run's averaged
    parameters, which are already a better 8x8 flow than a fresh one; its own checkpoint wins
    on resume; another model is refused naming the key."""
    small = tmp_path / "small"
    train(small, "train.ema=0.5", "train.steps=24")
    big = [*TINY, "lattice.shape=[8, 8]", "train.eval_every=0"]
    trainer = Trainer(load_config(None, [*big, f"train.init_from={small}"]),
                      run_ctx(tmp_path / "big"))
    assert same_state(trainer.model.state_dict(), final_params(small))
    first = trainer.run(until=1).last["loss"]
    fresh = Trainer(load_config(None, big), run_ctx(tmp_path / "fresh")).run(until=1).last
    assert first < fresh["loss"] - 1.0  # nats: 24 small steps take off a good part of the KL
    trainer.run(until=3)
    # a resumed run continues from its own checkpoint, whatever init_from says
    again = Trainer(load_config(None, [*big, f"train.init_from={tmp_path / 'fresh'}"]),
                    run_ctx(tmp_path / "big"))
    assert again.step == 3 and same_state(again.model.state_dict(), trainer.model.state_dict())
    with pytest.raises(ConfigError, match=r"train.init_from.*model.layers: 8 .* 16"):
        Trainer(load_config(None, [*big, "model.layers=16", f"train.init_from={small}"]),
                run_ctx(tmp_path / "other"))
    with pytest.raises(ConfigError, match=r"train.init_from.*lattice.dims: 2 .* 3"):
        Trainer(load_config(None, [*big, "lattice.shape=[4, 4, 4]", "model.layers=12",
                                     f"train.init_from={small}"]),
                run_ctx(tmp_path / "3d"))
    with pytest.raises(InputFileError, match="nowhere"):
        Trainer(load_config(None, [*big, f"train.init_from={tmp_path / 'nowhere'}"]),
                run_ctx(tmp_path / "none"))
    ckpt = list_checkpoints(small / "checkpoints")[-1][1]  # a checkpoint file works too
    assert same_state(Trainer(load_config(None, [*big, f"train.init_from={ckpt}"]),
                              run_ctx(tmp_path / "file")).model.state_dict(), final_params(small))


def test_pretrain_stage_starts_the_run_and_both_resume(tmp_path, monkeypatch):
    """``train.pretrain``: the first stage trains on 4x4 in RUN_DIR/pretrain, the 8x8 run
    starts from its averaged flow; a first stage stopped by the walltime resumes to the same
    parameters as an uninterrupted one, a finished one is not run again, and a run with its
    own checkpoints skips it."""
    from hpcflow.app.train import prepare_training

    def staged(run_dir, *extra):
        cfg = load_config(None, [*TINY, "lattice.shape=[8, 8]", "train.ema=0.5",
                                 "train.pretrain={shape: [4, 4], steps: 6}", *extra])
        trainer, started = prepare_training(cfg, run_ctx(run_dir))
        return trainer, (trainer.run(started=started) if trainer is not None else None)

    trainer, result = staged(tmp_path / "full")
    pre = tmp_path / "full" / "pretrain"
    assert [s for s, _ in list_checkpoints(pre / "checkpoints")][-1] == 6
    assert load_model(pre).config.lattice.shape == [4, 4] and result.step == 12
    first = read_metrics(tmp_path / "full" / "metrics.jsonl")[0]["loss"]
    train(tmp_path / "fresh", "lattice.shape=[8, 8]", "train.ema=0.5")
    assert first < read_metrics(tmp_path / "fresh" / "metrics.jsonl")[0]["loss"] - 1.0
    assert not same_state(final_params(tmp_path / "full"), final_params(tmp_path / "fresh"))
    # a walltime shorter than the margin stops the first stage after one step, before the run
    monkeypatch.setattr(Trainer, "run", _counting(Trainer.run, calls := []))
    trainer, result = staged(tmp_path / "cut", "train.walltime=1")
    assert trainer is None and not (tmp_path / "cut" / "checkpoints").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "pretrain" / "checkpoints")] == [1]
    staged(tmp_path / "cut")  # resumes the first stage, then the run
    assert same_state(final_params(tmp_path / "cut"), final_params(tmp_path / "full"))
    assert same_state(final_params(tmp_path / "cut" / "pretrain"), final_params(pre))
    calls.clear()
    staged(tmp_path / "cut", "train.steps=14")  # resumes the run alone
    assert [(t.label, t.step) for t in calls] == [("train", 14)]
    (tmp_path / "cut" / "pretrain").rename(tmp_path / "gone")
    staged(tmp_path / "cut", "train.steps=15")  # its own checkpoints: no first stage needed
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")][-1] == 15


def _counting(run, calls):
    def wrapped(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        calls.append(self)
        return result
    return wrapped


def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    cfg = load_config(None, TINY + ["train.max_bad_steps=2"])
    trainer = Trainer(cfg, run_ctx(tmp_path / "r"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_action = trainer.action
    trainer.action = lambda u: real_action(u) * float("nan")
    with pytest.raises(HpcflowError, match="non-finite"):
        trainer.run()
    assert trainer.skipped == 3
    # the state saved is the last good one (no NaN got into the parameters)
    saved = load_model(tmp_path / "r").state_dict()
    assert all(torch.equal(saved[k], before[k]) for k in before)


def test_batch_must_split_over_ranks(tmp_path):
    comm = NoneComm()
    comm.size = 2  # only the arithmetic of the split is checked here
    cfg = load_config(None, TINY + ["train.batch_size=7"])
    with pytest.raises(HpcflowError, match="train.batch_size"):
        Trainer(cfg, run_ctx(tmp_path, comm))


# ------------------------------------------------------------------------- kill -9 and resume
def _cli(run_dir, *extra, env=None):
    args = [sys.executable, "-m", "hpcflow", "train", "-", "-o", str(run_dir)]
    for item in TINY + ["train.steps=24", "train.eval_every=0"] + list(extra):
        args += ["--set", item]
    return args


def _run_config_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


def test_kill_minus_nine_then_resume_gives_identical_parameters(tmp_path):
    """Kill -9 at three different moments (one while a checkpoint is being written), resume
    each time with the same command; the final parameters equal an uninterrupted run's."""
    cfg_file = _run_config_file(tmp_path)
    base_env = clean_env()

    def command(run_dir):
        return [a if a != "-" else str(cfg_file) for a in _cli(run_dir)]

    ref = tmp_path / "ref"
    subprocess.run(command(ref), check=True, capture_output=True, env=base_env, timeout=300)

    run = tmp_path / "killed"
    env = {**base_env, "HPCFLOW_ATOMIC_DELAY": "0.5"}
    kills = 0
    # 1) during a checkpoint write: wait for a temporary checkpoint file, then kill -9
    proc = subprocess.Popen(command(run), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list((run / "checkpoints").glob(".step-*.tmp-*")):
            proc.send_signal(signal.SIGKILL)
            kills += 1
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert kills == 1, "never saw a checkpoint being written"
    assert list((run / "checkpoints").glob(".step-*.tmp-*"))  # a half-written file was left
    # 2), 3) at two other moments: after the 2nd and the 5th metrics line
    for lines in (2 + 3 * kills, 5 + 3 * kills):
        proc = subprocess.Popen(command(run), env=base_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            path = run / "metrics.jsonl"
            if path.exists() and len(path.read_text().splitlines()) >= lines:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    assert kills == 3
    res = subprocess.run(command(run), env=base_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout + res.stderr
    assert same_state(final_params(ref), final_params(run))
    assert metrics_without_time(ref) == metrics_without_time(run)
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated or lost lines


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    cfg_file = _run_config_file(tmp_path)
    env = clean_env()
    run = tmp_path / "r"
    cmd = [a if a != "-" else str(cfg_file) for a in _cli(run, "train.steps=100000")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped at step" in out and "SIGTERM" in out
    step = list_checkpoints(run / "checkpoints")[-1][0]
    assert step >= 3 and load_model(run).checkpoint_step == step


def test_profile_writes_a_trace_and_leaves_no_checkpoint(tmp_path):
    cfg_file = _run_config_file(tmp_path)
    run = tmp_path / "r"
    cmd = [a if a != "-" else str(cfg_file) for a in _cli(run)] + ["--profile"]
    res = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Self CPU" in res.stdout and (run / "profile" / "trace-r00000.json").stat().st_size
    assert not list_checkpoints(run / "checkpoints")


def test_tensorboard_without_package_is_a_config_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(HpcflowError, match="train.tensorboard"):
            train(tmp_path / "r", "train.tensorboard=true")
    else:
        train(tmp_path / "r", "train.tensorboard=true", until=2)
        assert list((tmp_path / "r" / "tensorboard").iterdir())


def test_training_plot_is_written(tmp_path):
    train(tmp_path / "r", "train.plot=true", until=4)
    assert (tmp_path / "r" / "training.png").stat().st_size > 1000


def test_trace_summary_self_times_and_calls():
    from hpcflow.app.profile import format_summary, summarize_trace
    x = {"ph": "X", "cat": "cpu_op", "pid": 1, "tid": 1}
    events = [dict(x, name="outer", ts=0.0, dur=100.0),
              dict(x, name="inner", ts=10.0, dur=30.0),
              dict(x, name="inner", ts=50.0, dur=20.0),
              dict(x, name="outer", ts=200.0, dur=10.0),
              dict(x, name="inner", ts=5.0, dur=1.0, tid=2),      # another thread
              {"ph": "X", "cat": "kernel", "name": "gemm", "pid": 0, "tid": 7, "ts": 20.0,
               "dur": 40.0},
              {"ph": "i", "cat": "cpu_instant_event", "name": "mark", "ts": 1.0}]
    rows = {(r["name"], r["kind"]): r for r in summarize_trace(events, steps=2)}
    assert rows[("outer", "cpu")]["calls"] == 1.0
    assert rows[("outer", "cpu")]["self_ms"] == pytest.approx((50 + 10) / 2 / 1e3)
    assert rows[("outer", "cpu")]["total_ms"] == pytest.approx(110 / 2 / 1e3)
    assert rows[("inner", "cpu")]["self_ms"] == pytest.approx(51 / 2 / 1e3)
    assert rows[("gemm", "device")]["self_ms"] == pytest.approx(20 / 1e3)
    assert len(rows) == 3
    text = format_summary(list(rows.values()))
    assert "Self CPU" in text and "Self device" in text


def test_recomputed_layers_give_the_same_training(tmp_path):
    """Activation checkpointing changes memory, not numbers: same metrics and parameters."""
    train(tmp_path / "plain", "train.steps=4")
    trainer, _ = train(tmp_path / "recomputed", "train.steps=4", "train.recompute_layers=true")
    assert trainer.model.recompute
    assert metrics_without_time(tmp_path / "plain") == metrics_without_time(tmp_path / "recomputed")
    assert same_state(final_params(tmp_path / "plain"), final_params(tmp_path / "recomputed"))


@pytest.mark.parametrize("group", ["U1", "SU2"])
def test_path_gradient_is_reparameterized_minus_score(group):
    """Path gradient + score term = the reparameterized gradient, parameter by parameter
    (float64): d/dtheta log q(f(z)) = d log q/dtheta at fixed U + d log q/dU . df/dtheta."""
    from hpcflow import build_action, build_model
    from hpcflow.app.propose import path_log_prob
    from hpcflow.flows.prior import STREAM_TRAIN

    cfg = load_config(None, TINY + [f"lattice.group={group}"])
    torch.manual_seed(3)
    model, action = build_model(cfg), build_action(cfg)
    perturb(model, 0.05)  # away from the identity map
    z = model.prior(range(6), seed=0, stream=STREAM_TRAIN)

    def grads(objective):
        model.zero_grad()
        objective().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def reparameterized():
        u, logdet = model(z)
        return (action(u) - logdet).mean()

    def path():
        u, _ = model(z)
        return (action(u) + path_log_prob(model, u)).mean()

    def score():
        return model.log_prob(model(z)[0].detach()).mean()

    g_rep, g_path, g_score = grads(reparameterized), grads(path), grads(score)
    assert all(p.requires_grad for p in model.parameters())
    assert g_score.norm() > 1e-3 * g_rep.norm()  # the term dropped is not negligible here
    assert torch.allclose(g_rep, g_path + g_score, atol=1e-9 * g_rep.norm())


def test_path_gradient_training_learns_and_recomputes_identically(tmp_path):
    """Path-gradient training lowers the loss, differs from the default estimator, and
    activation checkpointing (forward and inverse passes) leaves its numbers unchanged to
    rounding (without it, the inverse pass takes the context networks' values from the
    forward pass; with it, nothing is kept and the networks run again)."""
    _, result = train(tmp_path / "p", "train.gradient=path")
    m = metrics_without_time(tmp_path / "p")
    assert result.step == 12 and m[-1]["loss"] < m[0]["loss"]
    train(tmp_path / "r")  # same schedule, default estimator
    r = metrics_without_time(tmp_path / "r")
    # the same first samples and loss, different gradients, then different trajectories
    assert m[0]["loss"] == r[0]["loss"] and m[0]["grad_norm"] != r[0]["grad_norm"]
    assert [x["loss"] for x in m[1:]] != [x["loss"] for x in r[1:]]
    train(tmp_path / "pr", "train.gradient=path", "train.recompute_layers=true")
    pr = metrics_without_time(tmp_path / "pr")
    assert len(pr) == len(m)
    for a, b in zip(pr, m, strict=True):
        assert a == {k: pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v
                     for k, v in b.items()}
    a, b = final_params(tmp_path / "p"), final_params(tmp_path / "pr")
    # not bitwise equal: training without recompute takes the reused contexts
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12)
    # the inverse pass reproduced the forward log q at every step
    errors = [r["inverse_error"] for r in read_metrics(tmp_path / "p" / "metrics.jsonl")]
    assert len(errors) == len(m) and max(errors) < 1e-3


@pytest.mark.parametrize("conv", ["factorized", "tucker"])
def test_path_gradients_recompute_factorized_networks(tmp_path, conv):
    """Activation checkpointing of path-gradient steps with factorized (CP, Tucker) context
    networks: their channel products save the same tensors whether the parameters are frozen
    (the inverse pass) or not (its recomputation), so the run trains, with the numbers of the
    run without recomputation to rounding (it raised torch's CheckpointError before)."""
    extra = ("train.gradient=path", f"model.net.conv={conv}", "train.steps=4")
    train(tmp_path / "plain", *extra)
    train(tmp_path / "recomputed", *extra, "train.recompute_layers=true")
    plain, recomputed = (metrics_without_time(tmp_path / d) for d in ("plain", "recomputed"))
    assert len(recomputed) == len(plain) == 4
    for a, b in zip(recomputed, plain, strict=True):
        assert a == {k: pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v
                     for k, v in b.items()}


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_optimizer_is_fused_where_torch_has_the_kernel(monkeypatch, weight_decay):
    """Adam (or AdamW) in torch's fused form on CPU parameters of both precisions, equal to the
    per-tensor update to rounding; where the fused kernel is refused (a device without it),
    the multi-tensor form, equal to the per-tensor update exactly."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(lr=1e-2, amsgrad=True, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in start]
             for _ in range(5)]

    def run():
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = build_optimizer(params, cfg)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        return opt, [p.detach() for p in params]

    cls = torch.optim.AdamW if weight_decay else torch.optim.Adam
    reference = cls([torch.nn.Parameter(p.clone()) for p in start], lr=1e-2, amsgrad=True,
                    foreach=False, **({"weight_decay": weight_decay} if weight_decay else {}))
    for step in grads:
        for p, g in zip(reference.param_groups[0]["params"], step, strict=True):
            p.grad = g.clone()
        reference.step()
    expected = [p.detach() for p in reference.param_groups[0]["params"]]
    opt, fused = run()
    assert type(opt) is cls and opt.defaults["fused"] is True
    for a, b in zip(fused, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    def refuse_fused(self, params, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point "
                               "Tensors of supported devices")
        original(self, params, *args, fused=fused, **kwargs)

    original = cls.__init__
    monkeypatch.setattr(cls, "__init__", refuse_fused)
    opt, multi = run()
    assert not opt.defaults["fused"] and opt.defaults["foreach"] is True
    for a, b in zip(multi, expected, strict=True):
        assert torch.equal(a, b)


def _broken_inverse_trainer(run_dir, *extra):
    """A path-gradient trainer whose inverse pass misses log q by 5 nats."""
    cfg = load_config(None, TINY + ["train.gradient=path", *extra])
    trainer = Trainer(cfg, run_ctx(run_dir))
    inverse = trainer.model.inverse

    def broken(links, contexts=None):
        x, log_q = inverse(links, contexts)
        return x, log_q + 5.0

    trainer.model.inverse = broken
    return trainer


def test_path_steps_with_a_broken_inverse_are_skipped_then_stop(tmp_path):
    trainer = _broken_inverse_trainer(tmp_path / "r", "train.max_bad_steps=2")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(HpcflowError, match="train.max_inverse_error"):
        trainer.run()
    assert trainer.skipped == 3
    saved = load_model(tmp_path / "r").state_dict()
    assert all(torch.equal(saved[k], before[k]) for k in before)
    # the check can be switched off: then the (wrong) steps are taken
    trainer = _broken_inverse_trainer(tmp_path / "off", "train.max_inverse_error=0")
    assert trainer.run().step == 12 and trainer.skipped == 0
    errors = [r["inverse_error"] for r in read_metrics(tmp_path / "off" / "metrics.jsonl")]
    assert all(abs(e - 5.0) < 1e-3 for e in errors)


def test_stop_reason_from_summed_votes():
    """The votes of all ranks are summed in the step's collective; any vote stops, a signal
    is named before the wall time, and no vote means go on."""
    from hpcflow.app.train import _STOP_REASONS, _stop_reason

    assert _STOP_REASONS == ("SIGTERM", "SIGUSR1", "SIGINT", "walltime")
    assert _stop_reason([0.0, 0.0, 0.0, 0.0]) == ""
    assert _stop_reason([0.0, 0.0, 0.0, 2.0]) == "walltime"
    assert _stop_reason([0.0, 1.0, 0.0, 2.0]) == "signal SIGUSR1"
    assert _stop_reason([1.0, 1.0, 1.0, 0.0]) == "signal SIGTERM"


def test_votes_of_this_rank(tmp_path):
    """A received signal and a wall time about to run out are this rank's votes."""
    cfg = load_config(None, TINY)
    trainer = Trainer(cfg, run_ctx(tmp_path))
    assert trainer._stop_votes().tolist() == [0.0, 0.0, 0.0, 0.0]
    trainer._signal = signal.SIGUSR1
    trainer._walltime = 1.0  # seconds after _t_start, less than the 5 s margin
    assert trainer._stop_votes().tolist() == [0.0, 1.0, 0.0, 1.0]
    trainer.train_step()
    assert trainer._stop_reason == "signal SIGUSR1"
