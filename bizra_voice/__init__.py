"""BIZRA Voice: a self-hosted, full-duplex voice assistant server built on PersonaPlex-7B."""

__version__ = "0.1.0"
