"""The ``lorakiln`` command: ``main`` builds the parser and dispatches, and each sub-command is
one module here (``check``, ``train``, ``plan``...). ``python -m core.cli`` runs it. The top
layer, beside ``gui``: nothing in core imports it.
"""
