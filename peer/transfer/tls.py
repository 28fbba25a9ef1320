"""Mutual TLS 1.3 between two users, each pinned to the other's registered certificate.

Every user has a long-term Ed25519 identity key. :func:`make_certificate` turns
it into a self-signed certificate that is registered with the ledger at sign-up;
a side of a transfer then trusts exactly one certificate (the expected peer's)
and also compares the raw public key after the handshake, so a certificate that
merely chains or collides on a name is not enough.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from peer.transfer.errors import AuthenticationFailed

__all__ = [
    "certificate_login",
    "certificate_public_key",
    "check_peer",
    "client_context",
    "make_certificate",
    "peer_public_key",
    "server_context",
]

# RFC 5280 4.1.2.5: the value for a certificate with no well-defined expiry.
_NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def make_certificate(private_key: Ed25519PrivateKey, login: str) -> bytes:
    """Self-signed PEM certificate for ``login`` over its Ed25519 identity key.

    It is its own trust anchor: the peer loads it as the only CA it accepts.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, login)])
    public = private_key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NO_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(_dns_safe(login))]), critical=False)
        .sign(private_key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _dns_safe(login: str) -> str:
    # A SAN keeps strict verifiers happy; logins need not be DNS names, so sanitise.
    safe = "".join(c if c.isalnum() or c == "-" else "-" for c in login.lower()).strip("-")
    return (safe or "peer")[:63] + ".acb.invalid"


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise AuthenticationFailed(f"not a PEM certificate: {exc}") from exc


def certificate_public_key(cert_pem: bytes) -> bytes:
    """Raw 32-byte Ed25519 public key inside ``cert_pem``."""
    key = _load_cert(cert_pem).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AuthenticationFailed("certificate key is not Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def certificate_login(cert_pem: bytes) -> str:
    """The login (common name) a certificate was made for."""
    attrs = _load_cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise AuthenticationFailed("certificate has no common name")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def certificate_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 fingerprint, for log lines a person can compare."""
    return _load_cert(cert_pem).fingerprint(hashes.SHA256()).hex()


def _context(
    purpose: int, identity_key: Ed25519PrivateKey, cert_pem: bytes, peer_cert_pem: bytes
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Identity comes from pinning one certificate, not from a name.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, identity_key, cert_pem)
    try:
        ctx.load_verify_locations(cadata=peer_cert_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise AuthenticationFailed(f"peer certificate cannot be trusted: {exc}") from exc
    return ctx


def server_context(identity_key: Ed25519PrivateKey, cert_pem: bytes, peer_cert_pem: bytes) -> ssl.SSLContext:
    """TLS 1.3 server context that accepts only a client presenting ``peer_cert_pem``."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, identity_key, cert_pem, peer_cert_pem)
    # No session tickets: each session is one transfer, and a ticket arriving late
    # would get in the way of shutting TLS down before the bulk stream.
    ctx.num_tickets = 0
    return ctx


def client_context(identity_key: Ed25519PrivateKey, cert_pem: bytes, peer_cert_pem: bytes) -> ssl.SSLContext:
    """TLS 1.3 client context that accepts only a server presenting ``peer_cert_pem``."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, identity_key, cert_pem, peer_cert_pem)


def _load_identity(ctx: ssl.SSLContext, identity_key: Ed25519PrivateKey, cert_pem: bytes) -> None:
    """Load key and certificate without leaving the private key in a file.

    ``ssl`` only loads from paths; an anonymous memfd (Linux) keeps the key off
    the disk. A private temporary file is the fallback elsewhere.
    """
    key_pem = identity_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    blob = key_pem + cert_pem
    try:
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create("acb-identity", os.MFD_CLOEXEC)
            try:
                os.write(fd, blob)
                ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "identity.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            ctx.load_cert_chain(path)
    except ssl.SSLError as exc:
        raise AuthenticationFailed(f"our identity key and certificate do not load: {exc}") from exc


def peer_public_key(sock: ssl.SSLSocket) -> bytes:
    """Raw Ed25519 key of the certificate the peer presented in the handshake."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise AuthenticationFailed("peer presented no certificate")
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AuthenticationFailed("peer certificate key is not Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_peer(sock: ssl.SSLSocket, expected_public_key: bytes, who: str, *, login: str | None = None) -> None:
    """Raise :class:`AuthenticationFailed` unless the peer holds ``expected_public_key``.

    The TLS handshake already proved the peer holds the private half of the
    certificate it presented; comparing the raw key pins that certificate to
    the one the ledger registered. With ``login``, the certificate must also be
    made out to that login (the sale's buyer), not merely carry the right key.
    """
    if peer_public_key(sock) != expected_public_key:
        raise AuthenticationFailed(f"{who} presented a certificate for a different key than registered")
    if login is not None:
        der = sock.getpeercert(binary_form=True)
        attrs = x509.load_der_x509_certificate(der or b"").subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        named = attrs[0].value if attrs else None
        if (named.decode() if isinstance(named, bytes) else named) != login:
            raise AuthenticationFailed(f"{who} presented a certificate made out to someone other than {login}")


def close_quietly(sock: socket.socket | None) -> None:
    """Close a socket, ignoring errors of an already broken connection."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.close()
