"""Anomaly detection on each agent's own use of its identity, and the response to findings.

`Detector` (pure, O(1) per event) reads the audit trail's records; `Responder` records each
finding, logs it and, by policy, suspends the agent.
"""

from ensign.daemon.anomaly.detector import Detector, Finding
from ensign.daemon.anomaly.responder import Responder

__all__ = ["Detector", "Finding", "Responder"]
