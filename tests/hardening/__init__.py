"""Hardening suites: load, crash, fuzz, adversarial and secrets (issue 11).

Short forms run in `make test`; `ENSIGN_SOAK=1` (`make soak`) selects the long forms.
"""
