"""Communicator semantics in one process: NoneComm, backend selection and its errors, and the
consistency repair of allreduce_mean_ (with a scripted fake peer)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from hpcflow.distributed import BackendError, Communicator, NoneComm, make_communicator
from hpcflow.distributed.comm import _agree, _fingerprint, _pack_floats, _unpack_floats_

LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "PALS_RANKID", "SLURM_PROCID", "SLURM_STEP_ID", "RANK", "WORLD_SIZE")


@pytest.fixture
def alone(monkeypatch):
    """A process started without any launcher."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("HPCFLOW_GPU_AFFINITY", raising=False)


@pytest.fixture
def comm(alone):
    return make_communicator(backend="none", device="cpu")


def test_auto_alone_is_none(alone):
    comm = make_communicator()
    assert isinstance(comm, NoneComm)
    assert (comm.rank, comm.size, comm.local_rank, comm.local_size) == (0, 1, 0, 1)
    assert comm.is_root and comm.backend == "none"


def test_none_collectives_are_identities(comm):
    a = torch.randn(3, 2, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.complex64)
    a0, b0 = a.clone(), b.clone()
    comm.allreduce_mean_([a, b])
    assert torch.equal(a, a0) and torch.equal(b, b0)
    comm.broadcast_([a, b])
    assert torch.equal(a, a0)
    g = comm.allgather(a)
    assert torch.equal(g, a) and g.data_ptr() != a.data_ptr()  # a new tensor
    assert comm.allgather(torch.tensor(2.5)).shape == (1,)
    obj = {"step": 3}
    assert comm.broadcast_object(obj) is obj
    comm.barrier()
    comm.close()


def test_none_reductions_keep_types(comm):
    assert comm.allreduce_sum(3) == 3 and isinstance(comm.allreduce_sum(3), int)
    x = comm.allreduce_sum(0.1)
    assert isinstance(x, float) and x == 0.1  # a Python float stays a double
    arr = comm.allreduce_max(np.array([1.5, 2.0]))
    assert isinstance(arr, np.ndarray) and arr.tolist() == [1.5, 2.0]
    assert isinstance(comm.allreduce_sum(np.float32(2.0)), np.float32)
    t = torch.tensor([True, False])
    assert comm.allreduce_sum(t).tolist() == [True, False]
    with pytest.raises(TypeError):
        comm.allreduce_sum("3")


def test_mean_of_integers_is_refused(comm):
    with pytest.raises(TypeError, match="floating"):
        comm.allreduce_mean_([torch.zeros(3, dtype=torch.int64)])


def test_gradients_of_unused_parameters_become_zeros(comm):
    lin = torch.nn.Linear(2, 2)
    comm.allreduce_gradients_(lin.parameters())
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in lin.parameters())


def test_none_with_several_ranks_is_an_error(alone, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(BackendError, match="none.*2 ranks"):
        make_communicator(backend="none")


def test_missing_horovod_points_to_install_script(alone, monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod.torch", None)  # import now raises ImportError
    with pytest.raises(BackendError, match="install_horovod.sh"):
        make_communicator(backend="horovod", device="cpu")


def test_missing_mpi4py_is_a_clear_error(alone, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(BackendError, match="mpi4py"):
        make_communicator(backend="mpi", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_names_the_key(alone):
    with pytest.raises(BackendError, match="cuda"):
        make_communicator(backend="none", device="cuda")


def test_bad_gpu_affinity(alone, monkeypatch):
    monkeypatch.setenv("HPCFLOW_GPU_AFFINITY", "sideways")
    with pytest.raises(BackendError, match="HPCFLOW_GPU_AFFINITY"):
        make_communicator(backend="none", device="cpu")


def test_pack_unpack_round_trip_mixed_dtypes():
    ts = [torch.randn(2, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float32),
          torch.randn(3, dtype=torch.complex128), torch.randn(3, 2).t()]
    flat = _pack_floats(ts, torch.device("cpu"))
    assert flat.dtype == torch.float64 and flat.numel() == 6 + 4 + 6 + 6
    outs = [torch.empty_like(t) for t in ts]
    outs[3] = torch.empty(3, 2).t()  # non-contiguous target
    _unpack_floats_(flat, outs)
    assert all(torch.equal(a, b) for a, b in zip(ts, outs, strict=True))
    assert _pack_floats(ts[1:2], torch.device("cpu")).dtype == torch.float32


def test_fingerprint_sees_one_ulp():
    x = torch.randn(1000, dtype=torch.float64)
    y = x.clone()
    y[517] = torch.nextafter(y[517], torch.tensor(np.inf, dtype=torch.float64))
    hx, hy = _fingerprint(x), _fingerprint(y)
    assert _agree(hx) and not _agree(torch.maximum(hx, hy))  # the MAX-allreduce of two ranks
    assert hx[0] != hy[0]
    x_flip = x.clone()
    x_flip[10] = -x_flip[10]
    assert _fingerprint(x_flip)[0] != hx[0]  # a sign alone counts too
    odd = torch.randn(7, dtype=torch.float32)  # odd count of float32: 32-bit words
    odd2 = odd.clone()
    odd2[6] = torch.nextafter(odd2[6], odd2[6] + 1)
    assert _fingerprint(odd)[0] != _fingerprint(odd2)[0]
    z = x.clone()
    z[3], z[4] = torch.nextafter(z[3], z[3] + 1), torch.nextafter(z[4], z[4] - 1)
    assert _fingerprint(z)[0] != hx[0]  # compensating differences do not cancel


class _FakePeer(Communicator):
    """Rank 1 of 2 whose sum comes out one ulp off rank 0's (as an unlucky reduction could)."""

    backend = "fake"

    def __init__(self):
        super().__init__()
        self.rank, self.size = 1, 2
        self.root_result = None
        self.broadcasts = 0

    def _allreduce_(self, t, op):
        if op == "sum":
            self.root_result = (t * 2).clone()  # what "rank 0" got
            t.mul_(2)
            t[0] = torch.nextafter(t[0], t[0] + 1)
        else:  # max of [h, -h] against rank 0's fingerprint
            t.copy_(torch.maximum(t, _fingerprint(self.root_result / 2)))

    def _broadcast_(self, buf, root):
        self.broadcasts += 1
        buf.copy_((self.root_result / 2).view(torch.uint8))

    def _allgather_rows(self, rows):
        raise NotImplementedError

    def broadcast_object(self, obj=None, root=0):
        raise NotImplementedError

    def barrier(self):
        pass

    def abort(self, code=1):
        raise NotImplementedError


def test_disagreeing_ranks_are_repaired_from_root():
    comm = _FakePeer()
    x = torch.randn(5, dtype=torch.float64)
    y = x.clone()
    comm.allreduce_mean_([y])
    assert comm.broadcasts == 1 and comm.repairs == 1
    assert torch.equal(y, x)  # rank 0's (x + x) / 2, not the perturbed sum


def test_none_abort_exits_with_code():
    code = "from hpcflow.distributed import NoneComm; NoneComm(device='cpu').abort(3)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 3
