"""PersonaPlex engine: checkpoint loading, voice/text prompts, batched session slots.

Importing this package does not import torch; the heavy modules are imported where they are used.
"""
