"""What each rank runs in tests/app/test_step_collectives.py:

    mpiexec -n 2 python -m mpi4py tests/app/mpi_count.py RUN_DIR BACKEND

Trains the tiny configuration three times (``RUN_DIR/{plain,check,eval}``) and counts, for
every iteration of the training loop, the calls that reach the wire at two levels:

- ``method``: the communicator's primitives (``_allreduce_``, ``_broadcast_``,
  ``_allgather_rows``, ``broadcast_object``, ``barrier``), whatever the backend;
- ``wire``: the library underneath (every call on the mpi4py communicator, on
  ``torch.distributed``, on ``horovod.torch``), so that a primitive making two library calls
  counts twice.

Each rank writes ``RUN_DIR/counts-r<rank>.json``: per run, one entry per loop iteration with
the step it ended at and both counts.
"""

import json
import sys
from pathlib import Path

from hpcflow import load_config
from hpcflow.app.train import Trainer
from hpcflow.distributed import install_abort_hook, make_communicator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import TINY_U1, run_ctx  # noqa: E402

PRIMITIVES = ("_allreduce_", "_broadcast_", "_allgather_rows", "broadcast_object", "barrier")
# library calls that only read local state or end the job: not communication
LOCAL = {"Abort", "Free", "Get_rank", "Get_size", "abort", "destroy_process_group",
         "get_rank", "get_world_size", "is_available", "is_initialized", "local_rank",
         "local_size", "nccl_built", "rank", "shutdown", "size"}
RUNS = {
    "plain": ["train.eval_every=0", "train.checkpoint_every=1000"],
    "check": ["train.eval_every=0", "train.checkpoint_every=1000",
              "distributed.check_every=1"],
    "eval": ["train.eval_every=2", "train.checkpoint_every=3"],
}


class Counting:
    """A stand-in for a library object that logs the name of every call it forwards."""

    def __init__(self, target, log: list):
        self._target, self._log = target, log

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr) or name.startswith("_") or name in LOCAL or isinstance(attr, type):
            return attr

        def counted(*args, **kwargs):
            self._log.append(name)
            return attr(*args, **kwargs)

        return counted


def library_attribute(comm) -> str | None:
    """The attribute of ``comm`` that holds its library: mpi4py, torch.distributed, horovod."""
    return {"mpi": "_comm", "torch": "_dist", "horovod": "_hvd"}.get(comm.backend)


def count(comm, run_dir: Path, extra: list[str]) -> list[dict]:
    cfg = load_config(None, [*TINY_U1, "train.steps=7", f"distributed.backend={comm.backend}",
                             *extra])
    trainer = Trainer(cfg, run_ctx(run_dir, comm))
    method, wire = [], []
    for name in PRIMITIVES:
        original = getattr(comm, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            method.append(_name)
            return _original(*args, **kwargs)

        setattr(comm, name, counted)  # an instance attribute shadows the method
    library = library_attribute(comm)
    if library:
        setattr(comm, library, Counting(getattr(comm, library), wire))
    marks = []
    step = trainer.train_step

    def marked_step():
        marks.append((len(method), len(wire)))
        return step()

    trainer.train_step = marked_step
    try:
        trainer.run()
    finally:
        for name in PRIMITIVES:
            delattr(comm, name)
        if library:
            setattr(comm, library, getattr(comm, library)._target)
    # iteration i: from the start of step i + 1 to the start of the next (the training step,
    # then any evaluation, checkpoint or replica check of the loop); the last one ends in the
    # final checkpoint and is left out
    return [{"step": i + 1, "method": m1 - m0, "wire": w1 - w0,
             "calls": method[m0:m1] + [f"wire:{c}" for c in wire[w0:w1]]}
            for i, ((m0, w0), (m1, w1)) in enumerate(zip(marks[:-1], marks[1:], strict=True))]


def main() -> None:
    run_dir, backend = Path(sys.argv[1]), sys.argv[2]
    comm = make_communicator(backend, "cpu", 1)
    install_abort_hook(comm)
    out = {name: count(comm, run_dir / name, extra) for name, extra in RUNS.items()}
    out["size"] = comm.size
    (run_dir / f"counts-r{comm.rank}.json").write_text(json.dumps(out))
    comm.close()


if __name__ == "__main__":
    main()
