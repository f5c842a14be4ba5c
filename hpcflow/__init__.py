"""hpcflow: gauge-equivariant normalizing flows for U(1) and SU(N) lattice gauge theory in
2, 3 and 4 dimensions (Boyda, Lattice 2021; arXiv:2305.02402).

Public API (docs/index.md; pages of every module: ``make docs``)::

    cfg = hpcflow.load_config("configs/u1_2d.yaml", overrides=["action.beta=3.0"])
    model = hpcflow.build_model(cfg)        # untrained flow for that configuration
    model = hpcflow.load_model("runs/u1")   # trained flow, newest complete checkpoint
    U, log_q = model.sample(256)            # U: [256, Nd, *L, Nc, Nc] complex; log_q: [256]
    log_q2 = model.log_prob(U)              # inverse pass; gauge invariant
    S = hpcflow.build_action(cfg)(U)        # [256]

Nothing inside the package imports this module: it only re-exports.
"""

from ._version import __version__
from .app.build import build_action, build_model, load_model
from .app.config import Config, load_config
from .errors import ConfigError, HpcflowError, InputFileError

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "HpcflowError",
    "InputFileError",
    "build_action",
    "build_model",
    "load_config",
    "load_model",
]
