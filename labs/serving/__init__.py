"""Serving logic shared by the API and the CLI: loaded models, reasoning, request translation."""
