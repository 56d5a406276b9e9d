"""Tiny remote-code test models in the published LLaDA and Dream layouts (see build.py)."""
