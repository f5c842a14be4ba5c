"""Analysis of sample files: estimators with statistical errors (``stats``)."""
