"""Shared low-level helpers every layer may import: errors, atomic writes, progress, CLI help, quiet."""
