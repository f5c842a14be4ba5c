"""What each rank runs in the distributed training tests:

    mpiexec -n 2 python -m mpi4py tests/train/mpi_train.py RUN_DIR BACKEND [KEY=VALUE ...]

Trains the tiny configuration of the tests with the given backend, then every rank saves its
own parameters to ``RUN_DIR/params-r<rank>.pt`` (to show they are identical on all ranks) and
writes its process id to ``RUN_DIR/pid-r<rank>`` at the start (for the kill test).
"""

import os
import sys
from pathlib import Path

import torch

from hpcflow import load_config
from hpcflow.app.train import prepare_training
from hpcflow.distributed import install_abort_hook, make_communicator

# Run as a script: make the repository root importable for tests.helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import TINY_U1, run_ctx  # noqa: E402

TINY = [*TINY_U1, "train.steps=20", "train.eval_every=5", "train.checkpoint_every=2"]


def main() -> None:
    run_dir, backend, *extra = sys.argv[1:]
    run_dir = Path(run_dir)
    cfg = load_config(None, TINY + [f"distributed.backend={backend}", *extra])
    comm = make_communicator(cfg.distributed.backend, cfg.distributed.device,
                             cfg.distributed.threads)
    install_abort_hook(comm)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"pid-r{comm.rank}").write_text(str(os.getpid()))
    trainer, started = prepare_training(cfg, run_ctx(run_dir, comm))  # with train.pretrain
    trainer.run(started=started)
    torch.save(trainer.model.state_dict(), run_dir / f"params-r{comm.rank}.pt")
    comm.close()


if __name__ == "__main__":
    main()
