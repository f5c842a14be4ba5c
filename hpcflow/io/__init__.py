"""Files: the one atomic writer (``atomic``), sample files (``samples``), checkpoints
(``checkpoint``). Nothing here knows configuration keys."""
