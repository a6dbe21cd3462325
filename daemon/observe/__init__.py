"""What operators watch: Prometheus metrics, JSON log lines, and systemd readiness (sd_notify).

Imported by every layer; imports nothing of the daemon but its core.
"""
