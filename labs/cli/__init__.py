"""Command-line entry points (transport only: they call config, models and the engine)."""
