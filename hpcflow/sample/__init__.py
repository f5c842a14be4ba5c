"""Sampling: reference Markov chains (Hybrid Monte Carlo, ``hmc.py``) and sample files
(``storage.py``)."""
