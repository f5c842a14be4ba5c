"""``hpcflow export`` and ``hpcflow import``: configurations in and out of the project.

Export writes the Markov chain of a sample file (its states after every ``every``-th step; for
a file that keeps only its thinned chain, ``store: chain``, the configurations it kept) as ILDG
or NERSC files (docs/lattice-formats.md). Import reads ILDG/NERSC files of any code into an
hpcflow sample file (``sampler: imported``, one row per file in the order given, measured like
every other sample file): ``hpcflow analyze`` then reports its observables, and a sampler can
start from it (``sampler.start``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputFileError
from ..io.lattice_formats import export_samples, read_configuration
from ..io.samples import SampleHeader, ShardWriter, write_master
from ..lattice.action import GaugeAction
from ..lattice.groups import get_group
from ..lattice.observables import measured_names
from .sample import measure_numpy

__all__ = ["export_chain", "import_configurations"]


def export_chain(samples: str | Path, fmt: str, out_dir: str | Path, *, every: int = 1,
                 precision: str = "double") -> list[Path]:
    """Write the chain of ``samples`` as ``fmt`` files in ``out_dir`` (module docstring);
    returns the paths. A file of ``store: all`` gives the states after steps ``0, every,
    2 every, ...``; one of ``store: chain`` every ``every``-th configuration it kept (named by
    its position among them); ``store: none`` has nothing to export (:class:`InputFileError`).
    """
    return export_samples(samples, fmt, out_dir, step=every, chain=True, precision=precision)


def import_configurations(files: list[str | Path], out_dir: str | Path, *,
                          beta: float | None = None, batch_size: int = 8) -> Path:
    """Read ILDG/NERSC ``files`` (one configuration each, one lattice and group) into the
    sample file ``out_dir/samples.h5`` (a chain of ``sampler: imported``); ``beta``: the
    coupling, required unless the files record it (ILDG files written by hpcflow do)."""
    if not files:
        raise InputFileError(Path("."), "no configuration files given")
    first_links, first = read_configuration(files[0])
    group = get_group(first["group"])
    shape = tuple(int(x) for x in first["lattice_shape"])
    if beta is None:
        beta = first.get("beta")
        if beta is None:
            raise InputFileError(Path(files[0]), "records no beta: pass --beta")
    action = GaugeAction(group, float(beta))
    names = measured_names(group, len(shape))
    header = SampleHeader(group=group.name, lattice_shape=shape, beta=float(beta),
                          config=f"imported: {len(files)} files, first {files[0]}\n",
                          checkpoint_step=-1, sampler="imported", observables=names)
    out_dir = Path(out_dir)
    read = {0: (first_links, first)}  # the first file is read once
    writer = ShardWriter(out_dir, header, resume=False)
    try:
        _append_files(writer, files, read, group, shape, action, batch_size)
    except BaseException:  # a bad file: no partial sample file is left behind
        writer.close()
        writer.path.unlink(missing_ok=True)
        raise
    writer.close()
    return write_master(out_dir, 1)


def _append_files(writer, files, read: dict, group, shape, action, batch_size: int) -> None:
    """Rows of ``files`` (checked against ``group`` and ``shape``) appended to ``writer``;
    ``read``: files read already, by index."""
    for lo in range(0, len(files), batch_size):
        links = []
        for i in range(lo, min(lo + batch_size, len(files))):
            u, meta = read.pop(i, None) or read_configuration(files[i])
            if (meta["group"], tuple(meta["lattice_shape"])) != (group.name, shape):
                raise InputFileError(Path(files[i]), f"holds {meta['group']} "
                                     f"{list(meta['lattice_shape'])}, the first file "
                                     f"{group.name} {list(shape)}")
            links.append(u)
        u = torch.from_numpy(np.stack(links))
        k = len(links)
        nan = np.full(k, np.nan)
        with torch.no_grad():
            s = action(u).double().numpy()
        writer.append({"links": u, "log_q": nan, "action": s, "log_weight": nan,
                       "mcmc_state": np.arange(lo, lo + k), "accepted": np.ones(k, bool),
                       "observables": measure_numpy(u, group)})
