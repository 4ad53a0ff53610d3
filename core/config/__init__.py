"""The settings of a training run and nothing that acts on them: the schema (one dataclass per
group, ``schema``), each parameter's description and range (``params``), presets and
``--set`` overrides, sample-prompt lines, and what each optimizer setting means. The bottom
layer above ``core.system``: it imports no other part of core.
"""
