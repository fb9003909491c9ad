"""Serving: exported inference artifacts (TorchScript, INT8) and the scorers the HTTP service uses."""
