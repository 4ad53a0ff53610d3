"""Work on many runs: the runs library, comparisons and their charts, image grids, sweeps and
the training queue. Uses ``core.training`` to run; nothing below imports it.
"""
