"""SPIFFE federation: bundles of other trust domains (placeholder)."""

__all__: list[str] = []
