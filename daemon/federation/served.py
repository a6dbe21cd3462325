"""This trust domain's bundle as `/.well-known/spiffe-bundle` serves it, with a sequence number
that grows with every change and survives restarts (SPIFFE bundle §4.1: `spiffe_sequence`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ensign.daemon.federation.bundle import encode
from ensign.daemon.files import ensure_private_dir, write_private

log = logging.getLogger(__name__)


class ServedBundle:
    def __init__(self, data_dir: Path, refresh_hint: int) -> None:
        self._path = data_dir / "federation" / "served.json"
        self._hint = refresh_hint
        self._digest = ""
        self._sequence = 0
        self._document = b""
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        try:
            doc = json.loads(self._path.read_bytes())
            self._digest, self._sequence = str(doc["digest"]), int(doc["sequence"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("served bundle state unreadable; sequence numbers restart",
                        extra={"path": str(self._path), "error": str(e)})

    def document(self, certs: Sequence[x509.Certificate],
                 jwt_keys: Mapping[str, Any]) -> bytes:
        """The SPIFFE bundle of these authorities; the sequence moves when they change."""
        if not self._loaded:
            self._load()
        h = hashlib.sha256()
        for c in certs:
            h.update(c.public_bytes(Encoding.DER))
        for kid in sorted(jwt_keys):
            h.update(kid.encode() + b"\0")
        digest = h.hexdigest()
        if digest != self._digest:
            self._digest, self._sequence = digest, self._sequence + 1
            ensure_private_dir(self._path.parent)
            write_private(self._path, json.dumps({"digest": digest,
                                                  "sequence": self._sequence}).encode())
            self._document = b""
        if not self._document:
            self._document = encode(certs, jwt_keys, sequence=self._sequence,
                                    refresh_hint=self._hint)
        return self._document
