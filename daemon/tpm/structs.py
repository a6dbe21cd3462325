"""Pure-Python TPM 2.0 structures: TPMT_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, PCR digests.

A verifier must not need a TPM or libtss2: everything here uses only `struct`, `hashlib` and
`cryptography`, so `ensign tpm verify-evidence` runs anywhere and the daemon checks its own
quotes with the same code a remote verifier uses. Layouts follow TPM 2.0 Library Part 2
(Structures); all integers are big-endian.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ensign.daemon.errors import EnsignError

TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": only the TPM signs structures starting with it
TPM_ST_ATTEST_QUOTE = 0x8018

ALG_RSA, ALG_KEYEDHASH, ALG_ECC, ALG_NULL = 0x0001, 0x0008, 0x0023, 0x0010
ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512 = 0x0004, 0x000B, 0x000C, 0x000D
ALG_RSASSA, ALG_RSAPSS, ALG_ECDSA, ALG_ECDAA = 0x0014, 0x0016, 0x0018, 0x001A
ECC_CURVES: dict[int, ec.EllipticCurve] = {
    0x0003: ec.SECP256R1(), 0x0004: ec.SECP384R1(), 0x0005: ec.SECP521R1(),
}
HASH_NAMES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
BANKS = {name: alg for alg, name in HASH_NAMES.items()}
# SHA-1 signatures are refused: a quote must not be forgeable by a collision.
_CRYPTO_HASHES: dict[int, hashes.HashAlgorithm] = {
    ALG_SHA256: hashes.SHA256(), ALG_SHA384: hashes.SHA384(), ALG_SHA512: hashes.SHA512(),
}

# TPMA_OBJECT bits (Part 2, 8.3)
FIXEDTPM, FIXEDPARENT, SENSITIVEDATAORIGIN = 0x2, 0x10, 0x20
USERWITHAUTH, RESTRICTED, DECRYPT, SIGN = 0x40, 0x10000, 0x20000, 0x40000
#: An attestation key must be a restricted signing key that never left its TPM: a restricted
#: key refuses to sign data starting with TPM_GENERATED_VALUE unless the TPM produced it.
AK_REQUIRED = FIXEDTPM | FIXEDPARENT | SENSITIVEDATAORIGIN | RESTRICTED | SIGN


class EvidenceInvalid(EnsignError):
    """A TPM structure or evidence document that does not verify. Exit 65 (EX_DATAERR)."""

    exit_code = 65
    public_message = "TPM evidence does not verify"


class _Reader:
    __slots__ = ("buf", "off")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.off = 0

    def take(self, n: int) -> bytes:
        end = self.off + n
        if end > len(self.buf):
            raise EvidenceInvalid("truncated TPM structure")
        out = self.buf[self.off:end]
        self.off = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        v: int = struct.unpack_from(">H", self.take(2))[0]
        return v

    def u32(self) -> int:
        v: int = struct.unpack_from(">I", self.take(4))[0]
        return v

    def u64(self) -> int:
        v: int = struct.unpack_from(">Q", self.take(8))[0]
        return v

    def sized(self) -> bytes:
        """A TPM2B: u16 size, then that many bytes."""
        off = self.off
        if off + 2 > len(self.buf):
            raise EvidenceInvalid("truncated TPM structure")
        self.off = off + 2
        return self.take(self.buf[off] << 8 | self.buf[off + 1])

    def end(self, what: str) -> None:
        if self.off != len(self.buf):
            raise EvidenceInvalid(f"trailing bytes after {what}")


def digest(alg: int, data: bytes) -> bytes:
    name = HASH_NAMES.get(alg)
    if name is None:
        raise EvidenceInvalid(f"unsupported hash algorithm 0x{alg:04x}")
    return hashlib.new(name, data).digest()


# -- TPMT_PUBLIC ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TpmPublic:
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    scheme: int
    scheme_hash: int
    key: Any  # an RSA or EC public key from `cryptography`
    raw: bytes

    @property
    def name(self) -> bytes:
        """The TPM Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC). Credentials bind to it."""
        return struct.pack(">H", self.name_alg) + digest(self.name_alg, self.raw)


def parse_public(raw: bytes) -> TpmPublic:
    """Parse a marshaled TPMT_PUBLIC (RSA or ECC) into a `cryptography` public key.

    Cached: a verifier sees the same few AKs over and over, and decoding (and validating) the
    EC point is a tenth of a quote check. TpmPublic is immutable, so sharing it is safe.
    """
    return _parse_public(bytes(raw))


@functools.lru_cache(maxsize=256)
def _parse_public(raw: bytes) -> TpmPublic:
    r = _Reader(raw)
    typ, name_alg, attrs = r.u16(), r.u16(), r.u32()
    policy = r.sized()
    if r.u16() != ALG_NULL:  # symmetric (TPMT_SYM_DEF_OBJECT): keyBits and mode follow
        r.u16()
        r.u16()
    scheme, scheme_hash = r.u16(), 0
    if scheme != ALG_NULL:
        scheme_hash = r.u16()
        if scheme == ALG_ECDAA:
            r.u16()  # count
    key: Any
    if typ == ALG_RSA:
        r.u16()  # keyBits
        exponent = r.u32() or 65537  # 0 means the default exponent
        key = rsa.RSAPublicNumbers(exponent, int.from_bytes(r.sized(), "big")).public_key()
    elif typ == ALG_ECC:
        curve_id = r.u16()
        if r.u16() != ALG_NULL:  # kdf
            r.u16()
        x, y = r.sized(), r.sized()
        curve = ECC_CURVES.get(curve_id)
        if curve is None:
            raise EvidenceInvalid(f"unsupported ECC curve 0x{curve_id:04x}")
        size = (curve.key_size + 7) // 8
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(
                curve, b"\x04" + x.rjust(size, b"\0") + y.rjust(size, b"\0"))
        except ValueError as e:
            raise EvidenceInvalid(f"invalid ECC point: {e}") from None
    else:
        raise EvidenceInvalid(f"unsupported key type 0x{typ:04x}")
    r.end("TPMT_PUBLIC")
    return TpmPublic(typ, name_alg, attrs, policy, scheme, scheme_hash, key, raw)


def spki_sha256(tpmt_public: bytes) -> str:
    """A key's identity independent of TPM encodings: sha256 of its DER SubjectPublicKeyInfo."""
    der = parse_public(tpmt_public).key.public_bytes(Encoding.DER,
                                                     PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_attestation_key(pub: TpmPublic) -> None:
    if pub.attributes & AK_REQUIRED != AK_REQUIRED or pub.attributes & DECRYPT:
        raise EvidenceInvalid(
            f"AK is not a restricted signing key bound to its TPM (attributes "
            f"0x{pub.attributes:08x}, need 0x{AK_REQUIRED:08x} without decrypt)")


# -- TPMS_ATTEST ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    qualified_signer: bytes
    extra_data: bytes  # the verifier's nonce
    clock: int
    reset_count: int  # TPM resets (reboots); meaningful for keys in the endorsement hierarchy
    restart_count: int
    safe: bool
    firmware_version: int
    selection: tuple[tuple[int, tuple[int, ...]], ...]  # ((bank alg, (pcr, ...)), ...)
    pcr_digest: bytes

    @property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(i for _, idx in self.selection for i in idx)


_CLOCK_INFO = struct.Struct(">QIIBQ")  # clock, resetCount, restartCount, safe, firmwareVersion
_BITS = [tuple(j for j in range(8) if b >> j & 1) for b in range(256)]


def parse_attest(raw: bytes) -> Quote:
    # Hot path of every verifier (bench/tpm_quotes.py): fixed-size parts in one unpack each.
    r = _Reader(bytes(raw))
    magic, typ = struct.unpack(">IH", r.take(6))
    if magic != TPM_GENERATED_VALUE:
        raise EvidenceInvalid(f"quote was not generated by a TPM (magic 0x{magic:08x})")
    if typ != TPM_ST_ATTEST_QUOTE:
        raise EvidenceInvalid(f"attestation is not a quote (type 0x{typ:04x})")
    signer, extra = r.sized(), r.sized()
    clock, resets, restarts, safe, fw = _CLOCK_INFO.unpack(r.take(_CLOCK_INFO.size))
    selection = []
    for _ in range(r.u32()):  # TPML_PCR_SELECTION
        alg, size = struct.unpack(">HB", r.take(3))
        bitmap = r.take(size)
        selection.append((alg, tuple(i * 8 + j for i, byte in enumerate(bitmap)
                                     for j in _BITS[byte])))
    pcr_digest = r.sized()
    r.end("TPMS_ATTEST")
    return Quote(signer, extra, clock, resets, restarts, bool(safe), fw, tuple(selection),
                 pcr_digest)


# -- TPMT_SIGNATURE ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    alg: int
    hash_alg: int
    value: bytes  # DER for ECDSA, raw for RSA


def parse_signature(raw: bytes) -> Signature:
    r = _Reader(bytes(raw))
    alg, hash_alg = r.u16(), r.u16()
    if alg in (ALG_RSASSA, ALG_RSAPSS):
        value = r.sized()
    elif alg == ALG_ECDSA:
        sig_r, sig_s = r.sized(), r.sized()
        value = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    else:
        raise EvidenceInvalid(f"unsupported signature algorithm 0x{alg:04x}")
    r.end("TPMT_SIGNATURE")
    if hash_alg not in _CRYPTO_HASHES:
        raise EvidenceInvalid(f"unsupported signature hash 0x{hash_alg:04x}")
    return Signature(alg, hash_alg, value)


def verify_signature(pub: TpmPublic, message: bytes, sig: Signature) -> None:
    h = _CRYPTO_HASHES[sig.hash_alg]
    try:
        if sig.alg == ALG_ECDSA and isinstance(pub.key, ec.EllipticCurvePublicKey):
            pub.key.verify(sig.value, message, ec.ECDSA(h))
        elif sig.alg == ALG_RSASSA and isinstance(pub.key, rsa.RSAPublicKey):
            pub.key.verify(sig.value, message, padding.PKCS1v15(), h)
        elif sig.alg == ALG_RSAPSS and isinstance(pub.key, rsa.RSAPublicKey):
            pub.key.verify(sig.value, message, padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
        else:
            raise EvidenceInvalid(f"signature algorithm 0x{sig.alg:04x} does not fit the AK")
    except InvalidSignature:
        raise EvidenceInvalid("bad quote signature: not signed by this AK") from None


# -- PCRs ----------------------------------------------------------------------------------


def pcr_composite(selection: Sequence[tuple[int, Sequence[int]]],
                  values: Mapping[int, Mapping[int, bytes]], hash_alg: int) -> bytes:
    """H(PCR[i0] || PCR[i1] || ...) in the quote's selection order (banks, then ascending)."""
    h = hashlib.new(HASH_NAMES[hash_alg])
    for bank, indexes in selection:
        bank_values = values.get(bank, {})
        for i in indexes:
            v = bank_values.get(i)
            if v is None:
                raise EvidenceInvalid(f"quote covers PCR {i} but no value was given for it")
            h.update(v)
    return h.digest()


def extend(old: bytes, measurement: bytes, alg: int = ALG_SHA256) -> bytes:
    """What TPM2_PCR_Extend computes: H(old || measurement)."""
    return digest(alg, old + measurement)


def replay(base: bytes, measurements: Sequence[bytes], alg: int = ALG_SHA256) -> bytes:
    value = base
    for m in measurements:
        value = extend(value, m, alg)
    return value


def pcr_selection_bytes(bank: int, pcrs: Sequence[int]) -> bytes:
    """A marshaled TPML_PCR_SELECTION with one bank (3-byte bitmap: PCRs 0..23)."""
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    return struct.pack(">IHB", 1, bank, 3) + bytes(bitmap)


def policy_pcr_digest(bank: int, pcrs: Sequence[int], values: Mapping[int, bytes]) -> bytes:
    """The policyDigest of a session after one TPM2_PolicyPCR (Part 3, 23.7), from zero."""
    pcr_hash = hashlib.sha256(b"".join(values[p] for p in sorted(pcrs))).digest()
    cc_policy_pcr = struct.pack(">I", 0x0000017F)
    return hashlib.sha256(
        b"\0" * 32 + cc_policy_pcr + pcr_selection_bytes(bank, sorted(pcrs)) + pcr_hash).digest()


# -- quotes --------------------------------------------------------------------------------


def verify_quote(
    ak: TpmPublic | bytes,
    attest: bytes,
    signature: bytes,
    nonce: bytes,
    pcr_values: Mapping[int, Mapping[int, bytes]],
    expected_pcrs: Sequence[int] | None = None,
) -> Quote:
    """Check one quote; return it parsed. Raises EvidenceInvalid naming the first failure.

    (1) the AK is a restricted signing key; (2) the AK signed these exact bytes; (3) they are
    a TPM-generated quote; (4) it carries the verifier's nonce (freshness, no replay); (5) it
    covers the PCRs asked for; (6) the given PCR values hash to the quoted digest, so every
    value is vouched for by the TPM.
    """
    pub = parse_public(ak) if isinstance(ak, bytes | bytearray) else ak
    check_attestation_key(pub)  # (1)
    sig = parse_signature(signature)
    verify_signature(pub, attest, sig)  # (2)
    quote = parse_attest(attest)  # (3)
    if not hmac.compare_digest(quote.extra_data, nonce):  # (4)
        raise EvidenceInvalid("nonce mismatch: the quote is not an answer to this nonce "
                              "(stale or replayed evidence)")
    if expected_pcrs is not None and sorted(quote.pcrs) != sorted(expected_pcrs):  # (5)
        raise EvidenceInvalid(f"quote covers PCRs {sorted(quote.pcrs)}, "
                              f"expected {sorted(expected_pcrs)}")
    if pcr_composite(quote.selection, pcr_values, sig.hash_alg) != quote.pcr_digest:  # (6)
        raise EvidenceInvalid("PCR digest mismatch: the PCR values are not the quoted ones")
    return quote
