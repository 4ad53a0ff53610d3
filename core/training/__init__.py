"""The training engine and everything a run does while it trains: ``Trainer(config, sink,
control).run()`` (``engine``), shared by the GUI, the CLI and tests, with the step, optimizers,
loss, events and control, the run folder and its metrics, checkpoints and resume state,
sampling, faults, the memory forecast, the checks a config passes before a run
(``validation``) and the installation self-test. Uses ``core.kohya``, ``core.data``,
``core.models`` and ``core.config``; never the studies, the CLI or the GUI.
"""
