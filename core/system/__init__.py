"""Leaf helpers every layer may use, about the operating system and nothing of LoRA Kiln's own:
atomic file writes, bounded reads of untrusted files, the user's folders, the shipped
resources folder, and telling a live process from a dead one. Imports nothing else from core.
"""
