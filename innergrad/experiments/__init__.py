"""Reproducible experiments behind `innergrad experiment ...`: one runner (runner.py), one small module each."""
