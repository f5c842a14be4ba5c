"""The program each rank runs in the multi-process tests (tests/dist/test_comm_mpi.py):

    mpiexec -n 2 python -m mpi4py tests/dist/mpi_worker.py BACKEND SCENARIO OUT_DIR

``collectives``: every collective of the Communicator on inputs from :func:`rank_inputs`; each
rank saves what it got to ``OUT_DIR/rank<r>.pt`` and the test compares ranks and references.
``fail``: rank 1 raises while rank 0 waits in a barrier; the abort hook must end the job.
``abort_all``: rank 1 alone meets an input error and ends the job with status 3 via abort_all.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch


def rank_inputs(rank: int) -> dict:
    """Deterministic per-rank inputs (the test rebuilds them to compute references)."""
    g = torch.Generator().manual_seed(1000 + rank)
    return {
        "mean": [
            torch.randn(3, 4, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float32),
            torch.randn(2, 2, generator=g, dtype=torch.complex128),
            torch.randn(2, 3, 2, generator=g, dtype=torch.float64).transpose(0, 2),  # strided
            torch.empty(0, dtype=torch.float64),
        ],
        "mean32": [
            torch.randn(7, generator=g, dtype=torch.float32),
            torch.randn(2, 2, generator=g, dtype=torch.complex64),
        ],
        "gather": [
            torch.full((rank + 1, 3), float(rank), dtype=torch.float64) + torch.arange(3.0),
            torch.arange(2 * rank, dtype=torch.int64) + 10 * rank,  # rank 0 gives nothing
            torch.tensor([rank % 2 == 0, True]),
            torch.tensor(rank + 0.5),  # 0-d counts as [1]
        ],
        "sums": torch.randn(5, generator=g, dtype=torch.float64),
        "bcast": [
            torch.randn(4, 2, generator=g, dtype=torch.float64),
            torch.randint(0, 100, (3,), generator=g),
            torch.randn(3, generator=g, dtype=torch.complex64),
        ],
    }


def collectives(comm, out: Path) -> None:
    r = comm.rank
    got: dict = {"rank": r, "size": comm.size, "local_rank": comm.local_rank,
                 "local_size": comm.local_size, "device": str(comm.device),
                 "backend": comm.backend}
    x = rank_inputs(r)

    if comm.backend == "mpi":
        from hpcflow.distributed import launch_info, make_communicator

        got["launch"] = launch_info()
        got["auto"] = make_communicator(device="cpu").backend

    tensors = [t.clone() for t in x["mean"]]
    tensors[3] = x["mean"][3].clone().transpose(0, 2).contiguous().transpose(0, 2)  # keep strides
    comm.allreduce_mean_(tensors)
    got["mean"] = tensors
    tensors = [t.clone() for t in x["mean32"]]
    comm.allreduce_mean_(tensors)
    got["mean32"] = tensors
    # float32 gradients with float64 sums: one float64 buffer, the sums not divided
    tensors = [t.clone() for t in x["mean32"]]
    got["with_sums"] = (comm.allreduce_mean_(tensors, sums=x["sums"].clone()), tensors)

    got["gather"] = [comm.allgather(t) for t in x["gather"]]

    tensors = [t.clone() for t in x["bcast"]]
    comm.broadcast_(tensors, root=1)
    got["bcast"] = tensors
    obj = {"step": 7 + r, "name": f"rank{r}", "rng": torch.arange(4) * (r + 1), "nested": [r, {}]}
    got["object"] = comm.broadcast_object(obj if r == 0 else None, root=0)

    got["sum_int"] = comm.allreduce_sum(r + 1)
    got["sum_float"] = comm.allreduce_sum(0.25 * (r + 1))
    got["sum_np"] = comm.allreduce_sum(np.array([r, 1.5]))
    got["sum_bool"] = comm.allreduce_sum(torch.tensor([True, r == 1]))
    got["max_tensor"] = comm.allreduce_max(torch.tensor([float(r), -float(r)]))
    got["max_np_int"] = comm.allreduce_max(np.int64(10 - r))

    torch.manual_seed(r)  # different weights on every rank before the broadcast
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    comm.broadcast_model_(model)
    loss = model(torch.randn(4, 3, dtype=torch.float64)).square().sum()  # rank-dependent batch
    loss.backward()
    comm.allreduce_gradients_(model.parameters())
    opt.step()
    if r != 0:
        opt.state_dict()["state"][0]["exp_avg"].add_(1.0)  # spoil, the broadcast must repair
    comm.broadcast_optimizer_(opt)
    got["model"] = {k: v.clone() for k, v in model.state_dict().items()}
    got["grads"] = [p.grad.clone() for p in model.parameters()]
    got["opt_exp_avg"] = opt.state_dict()["state"][0]["exp_avg"].clone()
    got["replicas_agree"] = comm.check_replicas_(model, opt)
    if r != 0:  # one rank drifts by one ulp: found and repaired on both ranks
        with torch.no_grad():
            model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(9.0).double())
    got["replicas_drifted"] = comm.check_replicas_(model, opt)
    got["repaired_model"] = {k: v.clone() for k, v in model.state_dict().items()}
    got["repairs"] = comm.repairs

    comm.barrier()
    torch.save(got, out / f"rank{r}.pt")


def fail(comm, out: Path) -> None:
    from hpcflow.distributed import install_abort_hook

    install_abort_hook(comm)
    comm.barrier()
    if comm.rank == 1:
        raise RuntimeError("boom on rank 1")
    comm.barrier()  # rank 0 waits here for a partner that is gone
    time.sleep(120)


def abort_all_scenario(comm, out: Path) -> None:
    from hpcflow.distributed import abort_all, install_abort_hook

    install_abort_hook(comm)
    comm.barrier()
    if comm.rank == 1:
        abort_all(comm, "hpcflow train: error: checkpoint unreadable on rank 1", 3)
    comm.barrier()
    time.sleep(120)


def main(argv: list[str]) -> int:
    backend, scenario, out = argv
    out = Path(out)
    from hpcflow.distributed import make_communicator

    comm = make_communicator(backend=backend, device="cpu", threads=1)
    scenarios = {"collectives": collectives, "fail": fail, "abort_all": abort_all_scenario}
    scenarios[scenario](comm, out)
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
