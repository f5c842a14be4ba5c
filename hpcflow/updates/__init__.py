"""Exact Markov-chain updates of lattice gauge fields: HMC (``hmc``)."""
