"""Adapters that convert public datasets into the challenge layout (DESIGN.md §3)."""
