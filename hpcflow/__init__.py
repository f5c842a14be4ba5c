"""hpcflow: gauge-equivariant normalizing flows for U(1) and SU(N) lattice gauge theory in
2, 3 and 4 dimensions (Boyda, Lattice 2021; arXiv:2305.02402).

Public API (CONTRACTS.md, "Python API")::

    cfg = hpcflow.load_config("configs/u1_2d.yaml", overrides=["action.beta=3.0"])
    S = hpcflow.build_action(cfg)(U)        # U: [B, Nd, *L, Nc, Nc] complex -> S: [B]
"""

from ._version import __version__
from .config import Config, load_config
from .errors import ConfigError, HpcflowError, InputFileError
from .lattice.action import GaugeAction
from .lattice.groups import get_group

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "HpcflowError",
    "InputFileError",
    "build_action",
    "load_config",
]


def build_action(cfg: Config) -> GaugeAction:
    """The target action of a configuration: a callable ``links [B, Nd, *L, Nc, Nc] -> [B]``."""
    return GaugeAction(get_group(cfg.lattice.group), cfg.action.beta, cfg.action.c1)
