"""Data sources for matpac_jax (the built-in procedural demo corpus lives in ``demo_corpus``)."""
