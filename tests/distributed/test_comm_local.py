"""Communicator semantics in one process: NoneComm, backend selection and its errors, the sums
that ride with allreduce_mean_, and the replica check and its repair (with a scripted fake
peer)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from hpcflow.distributed import BackendError, Communicator, NoneComm, make_communicator
from hpcflow.distributed.comm import (
    _FP_CHUNK,
    _agree,
    _fingerprint,
    _pack_floats,
    _state_tensors,
    _unpack_floats_,
)

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


def test_none_sums_ride_along_unchanged(comm):
    """One process: the mean is the identity and the sums come back as given."""
    a = torch.randn(3, dtype=torch.float64)
    sums = torch.tensor([1.0, 0.0, 2.5], dtype=torch.float32)
    a0 = a.clone()
    out = comm.allreduce_mean_([a], sums=sums)
    assert torch.equal(a, a0) and torch.equal(out, sums)
    assert comm.allreduce_mean_([a]) is None
    with pytest.raises(TypeError, match="floating"):
        comm.allreduce_mean_([a], sums=torch.zeros(2, dtype=torch.int64))
    lin = torch.nn.Linear(2, 2)
    assert torch.equal(comm.allreduce_gradients_(lin.parameters(), sums=sums), sums)


def test_fingerprint_sees_one_ulp():
    x = torch.randn(1000, dtype=torch.float64)
    y = x.clone()
    y[517] = torch.nextafter(y[517], torch.tensor(np.inf, dtype=torch.float64))
    hx, hy = _fingerprint([x]), _fingerprint([y])
    assert _agree(hx) and not _agree(torch.maximum(hx, hy))  # the MAX-allreduce of two ranks
    assert hx[0] != hy[0]
    x_flip = x.clone()
    x_flip[10] = -x_flip[10]
    assert _fingerprint([x_flip])[0] != hx[0]  # a sign alone counts too
    odd = torch.randn(7, dtype=torch.float32)  # odd count of float32: a zero-padded last word
    odd2 = odd.clone()
    odd2[6] = torch.nextafter(odd2[6], odd2[6] + 1)
    assert _fingerprint([odd])[0] != _fingerprint([odd2])[0]
    z = x.clone()
    z[3], z[4] = torch.nextafter(z[3], z[3] + 1), torch.nextafter(z[4], z[4] - 1)
    assert _fingerprint([z])[0] != hx[0]  # compensating differences do not cancel


def test_fingerprint_of_several_tensors_and_chunks():
    """Order, tensor boundaries and the chunk a word falls in all count; a view at an odd
    offset and a 0-d tensor hash like their copies."""
    a = torch.randn(_FP_CHUNK + 5, dtype=torch.float64)  # two chunks
    b = torch.arange(3, dtype=torch.int64)
    h = _fingerprint([a, b])[0]
    assert h != _fingerprint([b, a])[0]
    a2 = a.clone()
    a2[_FP_CHUNK + 1] = torch.nextafter(a2[_FP_CHUNK + 1], a2[_FP_CHUNK + 1] + 1)
    assert _fingerprint([a2, b])[0] != h
    swapped = a.clone()  # the same word moved to the same offset of the other chunk
    swapped[1], swapped[_FP_CHUNK + 1] = a[_FP_CHUNK + 1], a[1]
    assert _fingerprint([swapped, b])[0] != h
    f = torch.randn(9, dtype=torch.float32)
    assert torch.equal(_fingerprint([f[1:]]), _fingerprint([f[1:].clone()]))
    assert torch.equal(_fingerprint([torch.tensor(2.5)]), _fingerprint([torch.tensor([2.5])]))
    assert _agree(_fingerprint([]))


def _trained_pair(seed: int):
    """A small model and its Adam optimizer after one step (state exists)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.1, amsgrad=True)
    model(torch.randn(4, 3, dtype=torch.float64)).square().sum().backward()
    opt.step()
    return model, opt


class _FakePeer(Communicator):
    """Rank 1 of 2; "rank 0" holds ``root_model``, ``root_opt`` and ``root_extra``."""

    backend = "fake"

    def __init__(self, root_model, root_opt, root_extra=()):
        super().__init__()
        self.rank, self.size = 1, 2
        self.root_model, self.root_opt = root_model, root_opt
        self.root_extra = list(root_extra)
        self.broadcasts = 0

    def _allreduce_(self, t, op):
        assert op == "max"  # the fingerprint of rank 0 against ours
        root = _state_tensors(self.root_model, self.root_opt) + self.root_extra
        t.copy_(torch.maximum(t, _fingerprint(root)))

    def _broadcast_(self, buf, root):
        self.broadcasts += 1
        # a repair broadcasts the model first, then the extra tensors
        source = (list(self.root_model.state_dict().values()) if self.broadcasts == 1
                  else self.root_extra)
        buf.copy_(torch.cat([t.contiguous().view(-1).view(torch.uint8) for t in source]))

    def _allgather_rows(self, rows):
        raise NotImplementedError

    def broadcast_object(self, obj=None, root=0):
        return self.root_opt.state_dict()

    def barrier(self):
        pass

    def abort(self, code=1):
        raise NotImplementedError


def test_equal_replicas_pass_without_broadcast():
    model, opt = _trained_pair(0)
    twin, twin_opt = _trained_pair(0)
    comm = _FakePeer(twin, twin_opt)
    assert comm.check_replicas_(model, opt)
    assert comm.broadcasts == 0 and comm.repairs == 0


def test_differing_replicas_are_repaired_from_root():
    """A parameter one ulp off, or only the optimizer's moments off: detected; afterwards the
    model and the optimizer state are rank 0's, bit for bit."""
    root, root_opt = _trained_pair(0)
    model, opt = _trained_pair(0)
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(9.0).double())
    comm = _FakePeer(root, root_opt)
    assert not comm.check_replicas_(model, opt)
    assert comm.repairs == 1 and comm.broadcasts == 1
    assert all(torch.equal(a, b) for a, b in zip(_state_tensors(model, opt),
                                                 _state_tensors(root, root_opt), strict=True))
    model, opt = _trained_pair(0)
    opt.state_dict()["state"][0]["exp_avg"].add_(1e-3)  # the moments alone
    comm = _FakePeer(root, root_opt)
    assert not comm.check_replicas_(model, opt) and comm.repairs == 1
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                       root_opt.state_dict()["state"][0]["exp_avg"])
    assert NoneComm(device="cpu").check_replicas_(model, opt)  # one rank: nothing to compare


def test_extra_tensors_are_compared_and_repaired():
    """``extra`` (the trainer's parameter average): equal passes; one ulp off in it alone is
    detected, and afterwards it is rank 0's."""
    root, root_opt = _trained_pair(0)
    model, opt = _trained_pair(0)
    root_avg = [p.detach().clone() * 0.5 for p in root.parameters()]
    avg = [t.clone() for t in root_avg]
    assert _FakePeer(root, root_opt, root_avg).check_replicas_(model, opt, extra=avg)
    avg[0].view(-1)[0] = torch.nextafter(avg[0].view(-1)[0], torch.tensor(9.0).double())
    comm = _FakePeer(root, root_opt, root_avg)
    assert not comm.check_replicas_(model, opt, extra=avg) and comm.repairs == 1
    assert all(torch.equal(a, b) for a, b in zip(avg, root_avg, strict=True))


def test_none_abort_exits_with_code():
    code = "from hpcflow.distributed import NoneComm; NoneComm(device='cpu').abort(3)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 3


@pytest.mark.parametrize("behaviour", ["returns", "raises"])
def test_mpi_abort_never_returns_even_when_mpi_abort_does(monkeypatch, behaviour):
    """MPI_Abort is a best attempt: MPICH's returned now and then on a loaded 2-core CI node, and
    the caller printed its message twice; mpi4py raises where the library reports an error.
    MPIComm.abort ends the process itself in both cases."""
    from hpcflow.distributed import comm as comm_module

    class Exited(BaseException):
        pass

    class FailingAbort:
        def Abort(self, code):  # noqa: N802 - mpi4py's spelling
            self.code = code
            if behaviour == "raises":
                raise RuntimeError("MPI_Abort failed")

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(comm_module, "ABORT_DRAIN_S", 0.0)
    monkeypatch.setattr(comm_module.os, "_exit", fake_exit)
    comm = object.__new__(comm_module.MPIComm)
    comm._comm = FailingAbort()
    with pytest.raises(Exited, match="2"):
        comm.abort(2)
    assert comm._comm.code == 2
    with pytest.raises(Exited, match="3"):  # no MPI world (torchrun, alone): exits all the same
        comm_module._abort_world(None, 3)
