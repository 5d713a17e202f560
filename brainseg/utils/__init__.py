"""Utilities: visualisation (overlays) and benchmarking helpers."""
