"""Ensign's daemon: config, CA, SVIDs, registry, peer tracking, attestation, gRPC services."""
