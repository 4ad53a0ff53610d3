"""The training engine: ``Trainer(config, sink, control).run()``, shared by GUI, CLI and tests."""
