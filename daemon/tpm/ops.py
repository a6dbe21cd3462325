"""Blocking TPM operations on one ESAPI context (run only on the TpmWorker thread).

Facts these rely on (reference/tpm.md): swtpm and many TPMs have 3 transient object slots and
no resource manager, so every transient object but the AK is flushed right after use, and
leftovers from a crashed run are flushed at connect. The storage parent is a primary in the
*endorsement* hierarchy: keys under it get real reset/restart counters in their quotes (under
the owner hierarchy they are obfuscated), which is how a TPM restart is told apart from an
out-of-band PCR change. It is re-derived from the seed each time instead of being persisted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TSS2_LOG", "all+NONE")  # before tpm2-tss loads: no stderr noise

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HT,
    TPM2_SE,
    TPM2_SU,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_HA,
)
from tpm2_pytss.utils import (
    NoSuchIndex,
    NVReadEK,
    create_ek_template,
    make_credential,
)

from ensign.daemon.files import ensure_private_dir, write_private
from ensign.daemon.tpm import structs as ts
from ensign.daemon.tpm.errors import TpmCommandFailed

log = logging.getLogger(__name__)

BANK = "sha256"
AK_ATTRS = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH)
# ":null" matters: without it a restricted signing template gets aes128cfb and is rejected.
AK_TEMPLATE = "ecc256:ecdsa-sha256:null"
PARENT_TEMPLATE = "ecc256:aes128cfb"

# EK kinds in order of preference: (template name, persistent handle, policy session hash).
# The low range EKs' authPolicy is PolicySecret(TPM_RH_ENDORSEMENT); the high range P-384 EK
# (TCG EK profile "policy B") is PolicyOR(A, C) over SHA-384 (both digests recomputed in
# reference/tpm.md and equal to tpm2_pytss' template_policy.sha384 branches).
EK_KINDS = (("EK-RSA2048", 0x81010001), ("EK-ECC256", 0x81010002),
            ("EK-HIGH-ECC384", 0x81010016))
_POLICY_A_SHA384 = bytes.fromhex(
    "8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e"
    "143e8bb1133824ccb431053871c6db53")
_POLICY_C_SHA384 = bytes.fromhex(
    "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5"
    "b4947c2d73e63005eed2dc2b3593d165")


@dataclass(frozen=True, slots=True)
class EkInfo:
    kind: str  # "EK-RSA2048" | "EK-ECC256" | "EK-HIGH-ECC384"
    public: bytes  # marshaled TPMT_PUBLIC
    certificate: bytes | None  # DER, from the TCG NV index; None if the TPM has none
    persistent: int | None

    @property
    def sha256(self) -> str:
        """The EK's identity in selectors: sha256 of its DER SubjectPublicKeyInfo."""
        return ts.spki_sha256(self.public)


@dataclass(slots=True)
class TpmSession:
    """What `open_session` set up on one context: valid until the context is dropped."""

    ctx: ESAPI
    ek: EkInfo
    ak: Any  # ESYS_TR of the loaded AK
    ak_public: bytes  # marshaled TPMT_PUBLIC
    ak_created: bool
    flushed: list[int] = field(default_factory=list)  # leftover transient handles flushed


# -- connect -------------------------------------------------------------------------------


def open_session(ctx: ESAPI, ak_file: Path, check_ek: Callable[[EkInfo], None]) -> TpmSession:
    """Prepare a fresh context: flush leftovers, find and check the EK, load (or create) the
    AK, and prove by credential activation that the AK lives in the TPM that holds the EK."""
    with contextlib.suppress(TSS2_Exception):
        ctx.startup(TPM2_SU.CLEAR)  # a no-op error when the platform already started it
    flushed = flush_transients(ctx)
    if flushed:
        log.info("flushed leftover transient TPM objects",
                 extra={"handles": [hex(h) for h in flushed]})
    ek = read_ek(ctx)
    check_ek(ek)
    parent = _parent(ctx)
    try:
        ak, ak_public, created = _load_or_create_ak(ctx, parent, ak_file, ek)
    finally:
        ctx.flush_context(parent)
    session = TpmSession(ctx, ek, ak, ak_public, created, flushed)
    challenge = secrets.token_bytes(32)
    blob, secret = make_credential(TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.unmarshal(ek.public)[0]),
                                   challenge, ts.parse_public(ak_public).name)
    if activate(session, blob, secret) != challenge:
        raise TpmCommandFailed("credential activation returned the wrong secret")
    return session


def flush_transients(ctx: ESAPI) -> list[int]:
    flushed = []
    for kind in (TPM2_HT.TRANSIENT, TPM2_HT.LOADED_SESSION, TPM2_HT.SAVED_SESSION):
        for h in handles(ctx, kind):
            with contextlib.suppress(TSS2_Exception):  # a session may be gone already
                ctx.flush_context(ctx.tr_from_tpmpublic(h))
                flushed.append(h)
    return flushed


def handles(ctx: ESAPI, kind: int) -> list[int]:
    _, cap = ctx.get_capability(TPM2_CAP.HANDLES, int(kind) << 24, 64)
    return [int(h) for h in cap.data.handles]


def read_ek(ctx: ESAPI) -> EkInfo:
    """The first EK kind with a certificate in NV; without any, the RSA EK from its template."""
    nv = NVReadEK(ctx)
    chosen: tuple[str, int, bytes | None, Any] | None = None
    for kind, persistent in EK_KINDS:
        try:
            cert, template = create_ek_template(kind, nv)
        except (ValueError, NoSuchIndex):
            continue  # high range kinds exist only with a certificate
        if cert is not None:
            chosen = (kind, persistent, bytes(cert), template)
            break
        if chosen is None:
            chosen = (kind, persistent, None, template)
    if chosen is None:
        raise TpmCommandFailed("the TPM has no usable endorsement key")
    kind, persistent, cert, template = chosen
    public = _persistent_public(ctx, persistent)
    if public is not None:
        return EkInfo(kind, public, cert, persistent)
    # Not provisioned as a persistent key: the template re-derives the same key from the seed.
    handle, pub, *_ = ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    ctx.flush_context(handle)
    return EkInfo(kind, bytes(pub.publicArea.marshal()), cert, None)


def _persistent_public(ctx: ESAPI, handle: int) -> bytes | None:
    try:
        tr = ctx.tr_from_tpmpublic(handle)
    except TSS2_Exception:
        return None
    try:
        pub, _, _ = ctx.read_public(tr)
        return bytes(pub.publicArea.marshal())
    finally:
        ctx.tr_close(tr)


def _parent(ctx: ESAPI) -> Any:
    tmpl = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
        PARENT_TEMPLATE, objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS))
    handle, *_ = ctx.create_primary(None, tmpl, ESYS_TR.ENDORSEMENT)
    return handle


def _load_or_create_ak(ctx: ESAPI, parent: Any, ak_file: Path,
                       ek: EkInfo) -> tuple[Any, bytes, bool]:
    saved = _read_ak_blob(ak_file)
    if saved is not None and saved[2] == ek.sha256:
        try:
            priv = TPM2B_PRIVATE.unmarshal(saved[0])[0]
            pub = TPM2B_PUBLIC.unmarshal(saved[1])[0]
            return ctx.load(parent, priv, pub), bytes(pub.publicArea.marshal()), False
        except TSS2_Exception as e:  # the TPM was cleared: its seeds changed
            log.warning("saved AK does not load; creating a new one", extra={"error": str(e)})
    elif saved is not None:
        log.warning("saved AK belongs to another EK; creating a new one")
    tmpl = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(AK_TEMPLATE, objectAttributes=AK_ATTRS))
    priv, pub, *_ = ctx.create(parent, None, tmpl)
    _write_ak_blob(ak_file, priv.marshal(), pub.marshal(), ek.sha256)
    return ctx.load(parent, priv, pub), bytes(pub.publicArea.marshal()), True


def _read_ak_blob(path: Path) -> tuple[bytes, bytes, str] | None:
    try:
        doc = json.loads(path.read_bytes())
        return (base64.b64decode(doc["private"]), base64.b64decode(doc["public"]),
                str(doc["ek_sha256"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("unreadable AK blob; creating a new AK", extra={"path": str(path),
                                                                    "error": str(e)})
        return None


def _write_ak_blob(path: Path, private: bytes, public: bytes, ek_sha256: str) -> None:
    ensure_private_dir(path.parent)
    write_private(path, json.dumps({
        "version": 1, "private": base64.b64encode(private).decode(),
        "public": base64.b64encode(public).decode(), "ek_sha256": ek_sha256,
    }, indent=1).encode())


# -- credential activation -----------------------------------------------------------------


MAX_CHALLENGE_PART = 1024  # TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET are far smaller


def parse_challenge(credential_blob: bytes, encrypted_secret: bytes) -> tuple[Any, Any]:
    """Unmarshal a verifier's credential in software, before it reaches the TPM thread (a
    malformed one must not look like a transport failure there). ValueError if malformed."""
    parts = []
    for cls, raw in ((TPM2B_ID_OBJECT, credential_blob),
                     (TPM2B_ENCRYPTED_SECRET, encrypted_secret)):
        if not 2 < len(raw) <= MAX_CHALLENGE_PART:
            raise ValueError(f"{cls.__name__} of {len(raw)} bytes")
        try:
            obj, used = cls.unmarshal(raw)
        except Exception as e:  # tpm2-tss MU errors, cffi errors
            raise ValueError(f"{cls.__name__}: {e}") from None
        if used != len(raw):
            raise ValueError(f"{cls.__name__}: trailing bytes")
        parts.append(obj)
    return parts[0], parts[1]


def activate(session: TpmSession, blob: Any, secret: Any) -> bytes:
    """TPM2_ActivateCredential with the AK and the EK: the TPM releases the secret only if it
    holds the EK's private key and a loaded object with the Name the credential was made for."""
    ctx, ek = session.ctx, session.ek
    if ek.persistent is not None:
        ek_handle, transient = ctx.tr_from_tpmpublic(ek.persistent), False
    else:
        _, template = create_ek_template(ek.kind, NVReadEK(ctx))
        ek_handle, *_ = ctx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        transient = True
    high = ek.kind.startswith("EK-HIGH")
    policy = ctx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA384 if high else TPM2_ALG.SHA256)
    try:
        ctx.policy_secret(ESYS_TR.ENDORSEMENT, policy)
        if high:
            ctx.policy_or(policy, TPML_DIGEST([_POLICY_A_SHA384, _POLICY_C_SHA384]))
        return bytes(ctx.activate_credential(session.ak, ek_handle, blob, secret,
                                             session1=ESYS_TR.PASSWORD, session2=policy))
    finally:
        ctx.flush_context(policy)
        if transient:
            ctx.flush_context(ek_handle)
        else:
            ctx.tr_close(ek_handle)


# -- PCRs and quotes -----------------------------------------------------------------------


def _selection(pcrs: Sequence[int]) -> str:
    return f"{BANK}:" + ",".join(str(p) for p in sorted(pcrs))


def read_pcrs(ctx: ESAPI, pcrs: Sequence[int]) -> dict[int, bytes]:
    """PCR values of the sha256 bank. TPM2_PCR_Read returns at most 8 per call: loop."""
    out: dict[int, bytes] = {}
    todo = sorted(set(pcrs))
    while todo:
        _, sel, digests = ctx.pcr_read(_selection(todo[:8]))
        got = [i * 8 + j for s in sel for i in range(s.sizeofSelect) for j in range(8)
               if s.pcrSelect[i] >> j & 1]
        if not got:
            raise TpmCommandFailed(f"the TPM has no {BANK} bank for PCRs {todo[:8]}")
        for i, d in zip(got, digests, strict=True):
            out[i] = bytes(d)
        todo = [p for p in todo if p not in out]
    return out


@dataclass(frozen=True, slots=True)
class RawQuote:
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]


def quote(session: TpmSession, pcrs: Sequence[int], nonce: bytes) -> RawQuote:
    """Quote and read the PCRs the quote covers; retried if a PCR moved in between (another
    TPM client extended it), so the values always match the signed digest."""
    for _ in range(5):
        before = read_pcrs(session.ctx, pcrs)
        attest, sig = session.ctx.quote(session.ak, _selection(pcrs), nonce)
        after = read_pcrs(session.ctx, pcrs)
        if before == after:
            return RawQuote(bytes(attest), bytes(sig.marshal()), after)
    raise TpmCommandFailed("PCRs kept changing while quoting")


def extend(ctx: ESAPI, pcr: int, digest: bytes) -> None:
    ctx.pcr_extend(ESYS_TR(pcr), TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]))


# -- sealing -------------------------------------------------------------------------------


def seal(ctx: ESAPI, data: bytes, policy_digest: bytes) -> tuple[bytes, bytes]:
    """A sealed data object whose authPolicy is `policy_digest` (a PolicyPCR digest): no
    userWithAuth, so only a policy session that satisfies it can unseal."""
    public = TPMT_PUBLIC(type=TPM2_ALG.KEYEDHASH, nameAlg=TPM2_ALG.SHA256,
                         objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
                         authPolicy=policy_digest)
    public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(data)))
    parent = _parent(ctx)
    try:
        priv, pub, *_ = ctx.create(parent, sensitive, TPM2B_PUBLIC(publicArea=public))
    finally:
        ctx.flush_context(parent)
    return bytes(priv.marshal()), bytes(pub.marshal())


def unseal(ctx: ESAPI, private: bytes, public: bytes, pcrs: Sequence[int]) -> bytes:
    parent = _parent(ctx)
    try:
        obj = ctx.load(parent, TPM2B_PRIVATE.unmarshal(private)[0],
                       TPM2B_PUBLIC.unmarshal(public)[0])
    finally:
        ctx.flush_context(parent)
    policy = ctx.start_auth_session(
        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256)
    try:
        ctx.policy_pcr(policy, None, _selection(pcrs))  # the TPM uses the PCRs' current values
        return bytes(ctx.unseal(obj, session1=policy))
    finally:
        ctx.flush_context(policy)
        ctx.flush_context(obj)


def pcr_values_hex(values: Mapping[int, bytes]) -> dict[str, str]:
    return {str(k): v.hex() for k, v in sorted(values.items())}
