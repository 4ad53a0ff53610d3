"""Data shipped with LoRA Kiln (presets, model configs, tokenizer, demo dataset).

Installed from a wheel this folder is the package ``lorakiln_resources``; code never
imports it directly but finds files through ``core.system.resources``.
"""
