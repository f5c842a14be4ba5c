"""Device policy of training: every tensor of a trainer lives on the run's device; TF32 is off
unless ``distributed.tf32``; ``train.deterministic`` sets what CUDA needs. The ``gpu`` tests
(a CUDA step equal to the CPU step, TF32 in a real product) skip without CUDA
(tests/conftest.py) and run in perf/gpu_check.sh."""

import os

import pytest
import torch

from hpcflow import load_config
from hpcflow.app.propose import propose
from hpcflow.app.train import Trainer
from hpcflow.distributed import NoneComm, set_float32_precision
from hpcflow.distributed.device import CUBLAS_DETERMINISTIC
from hpcflow.flows.prior import STREAM_TRAIN
from tests.helpers import TINY_U1, run_ctx

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


@pytest.fixture(autouse=True)
def _default_precision():
    """The flags are process-wide: every test starts and ends with the default policy."""
    set_float32_precision(False)
    yield
    set_float32_precision(False)


def trainer_on(device: str, run_dir, *extra, messages=None) -> Trainer:
    cfg = load_config(None, [*TINY_U1, f"distributed.device={device}", *extra])
    return Trainer(cfg, run_ctx(run_dir, NoneComm(device=device), messages=messages))


def off_device(trainer: Trainer) -> list[str]:
    """Names of the trainer's tensors that are not on ``trainer.ctx.device``: parameters,
    their gradients, buffers, optimizer state (but Adam's 0-d ``step`` counters, which torch
    keeps on the CPU on purpose: no device sync per step), and a training proposal."""
    device = trainer.ctx.device
    named = dict(trainer.model.named_parameters())
    named.update({f"{k}.grad": p.grad for k, p in trainer.model.named_parameters()
                  if p.grad is not None})
    named.update(dict(trainer.model.named_buffers()))
    for index, state in trainer.optimizer.state_dict()["state"].items():
        named.update({f"optimizer.{index}.{k}": v for k, v in state.items()
                      if isinstance(v, torch.Tensor) and not (k == "step" and v.dim() == 0)})
    p = propose(trainer.model, trainer.action, range(2), seed=0, stream=STREAM_TRAIN)
    named.update({f"proposal.{k}": v for k, v in vars(p).items() if isinstance(v, torch.Tensor)})
    return sorted(k for k, v in named.items() if v.device != device)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_every_trainer_tensor_is_on_the_run_device(tmp_path, device):
    trainer = trainer_on(device, tmp_path)
    trainer.train_step()
    assert trainer.optimizer.state_dict()["state"], "no optimizer state after a step"
    assert trainer.ctx.device.type == device
    assert off_device(trainer) == []


def test_tf32_off_unless_configured(tmp_path):
    """``distributed.tf32: false`` (default): cuBLAS and cuDNN may not use TF32 and float32
    matrix products run at "highest" precision; ``true``: TF32 everywhere ("high")."""
    set_float32_precision(True)  # as a previous job in this process might have left it
    trainer_on("cpu", tmp_path / "a")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    trainer_on("cpu", tmp_path / "b", "distributed.tf32=true")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"


def test_deterministic_sets_the_cuda_policy_and_says_so(tmp_path, monkeypatch):
    """``train.deterministic``: deterministic algorithms, cuDNN deterministic and not
    benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless the environment has a value,
    and one log line that says which."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "placeholder")  # restored after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    messages = []
    trainer_on("cpu", tmp_path / "a", messages=messages)  # TINY_U1 is deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_DETERMINISTIC == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    line = [m for m in messages if m.startswith("deterministic:")]
    assert len(line) == 1 and "CUBLAS_WORKSPACE_CONFIG=:4096:8 (set for cuBLAS)" in line[0]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    messages.clear()
    trainer_on("cpu", tmp_path / "b", messages=messages)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert any("CUBLAS_WORKSPACE_CONFIG=:16:8 (from the environment)" in m for m in messages)
    messages.clear()
    trainer_on("cpu", tmp_path / "c", "train.deterministic=false", messages=messages)
    assert not any(m.startswith("deterministic:") for m in messages)


# ------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [True, False])
def test_cuda_training_equals_cpu_training(tmp_path, deterministic):
    """Three float64 steps on CUDA give the CPU's losses, gradient norms and parameters to
    rounding (the prior draws identical numbers on both; only the kernels' summation order
    differs). With ``train.deterministic`` every kernel of the step must have a deterministic
    CUDA implementation, or torch raises here."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # process-wide: an earlier test may have set it
    try:
        _cuda_equals_cpu(tmp_path, deterministic)
    finally:
        torch.use_deterministic_algorithms(was)


def _cuda_equals_cpu(tmp_path, deterministic: bool) -> None:
    extra = [f"train.deterministic={str(deterministic).lower()}"]
    cpu, gpu = trainer_on("cpu", tmp_path / "cpu", *extra), trainer_on("cuda", tmp_path / "gpu",
                                                                        *extra)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    if deterministic:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    for _ in range(3):
        a, b = cpu.train_step(), gpu.train_step()
        for key in ("loss", "ess", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    assert off_device(gpu) == []
    for (name, p), q in zip(cpu.model.named_parameters(), gpu.model.parameters(), strict=True):
        assert torch.allclose(q.cpu(), p, rtol=1e-9, atol=1e-12), name


@pytest.mark.gpu
def test_tf32_setting_reaches_cuda_matmul(tmp_path):
    """With the default policy a float32 product on the GPU is float32-accurate; with
    ``distributed.tf32: true`` on Ampere or later it carries TF32's ~1e-3 errors."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(512, 512, generator=g, dtype=torch.float64) for _ in range(2))
    exact = a @ b

    def error() -> float:
        got = (a.float().cuda() @ b.float().cuda()).double().cpu()
        return float((got - exact).abs().max() / exact.abs().max())

    trainer_on("cuda", tmp_path / "a")
    assert error() < 1e-5
    trainer_on("cuda", tmp_path / "b", "distributed.tf32=true")
    if torch.cuda.get_device_capability() >= (8, 0):
        assert error() > 1e-5
