"""The HTTPS endpoint (placeholder)."""

__all__: list[str] = []
