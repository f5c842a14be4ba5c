"""Exact Markov-chain updates of lattice gauge fields: heat bath and over-relaxation
(``heatbath``; U(1), SU(2), SU(3), Wilson action) and Hybrid Monte Carlo (``hmc``; any group,
rectangle term included)."""
