"""The application: everything that knows configuration keys, run directories and ranks.

``config`` (the typed configuration, the one validation boundary), ``build`` (config ->
action, flow, trained flow), ``context`` (the run context every command shares: communicator,
run directory, per-rank logging, progress, the rank-split rule), ``train``, ``sample``,
``chains`` (reference Markov chains), ``analyze``, ``check``, ``info``, ``masks``; helpers
``optim``, ``metrics``, ``plots``, ``profile``. The library below (``hpcflow.lattice``,
``masks``, ``nn``, ``flows``, ``updates``, ``estimators``, ``io``, ``distributed``) never
imports this package.
"""
