"""The base models and the LoRA on them: reading single-file checkpoints and diffusers folders
offline, telling what a file holds, the built-in demo model, the components a family
consists of, and attaching LoRA adapters. Imports only ``core.config`` and ``core.system``.
"""
