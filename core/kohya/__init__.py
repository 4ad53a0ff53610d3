"""Kohya's formats: the LoRA file layout and its ``ss_*`` metadata (used by the engine when it
saves), and the importers and exporters of kohya_ss / sd-scripts configs. Sits under
``core.training`` and over ``core.data`` and ``core.models``.
"""
