"""Data sets and their preparation."""
