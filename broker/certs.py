"""TLS material for the broker: a private CA, the broker's server certificate and a client certificate.

``.ci/setup.sh --tls`` calls :func:`ensure_tls_files` (through ``python -m broker.admin tls-files``) and
gives RabbitMQ a TLS listener with the server pair. Clients verify the broker against ``ca.pem``
(``ACB_BROKER_CA``); a replica may also present ``client.pem``/``client.key`` (``ACB_BROKER_CERT``,
``ACB_BROKER_KEY``), which the broker checks against the same CA (mutual TLS).

Keys are ECDSA P-256: every TLS stack in play (OpenSSL under Python, Erlang's ssl under RabbitMQ)
handles them. The CA's private key never leaves this directory; only its certificate is handed out.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_tls_files", "default_hosts"]

_CA_DAYS = 3650
_LEAF_DAYS = 825  # the longest lifetime common clients accept for a server certificate


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"


def default_hosts() -> list[str]:
    """Names the broker is reached by on this machine: loopback and the host name."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return hosts


def ensure_tls_files(directory: Path, hosts: Sequence[str] | None = None) -> tuple[TlsFiles, bool]:
    """Create the CA, the server pair (for ``hosts``) and a client pair unless they exist.

    Returns the files and whether anything was written. A new CA re-issues both leaf certificates,
    so the set always hangs together.
    """
    files = TlsFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    wrote = False
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write(files.ca_key, _key_pem(ca_key), private=True)
        _write(files.ca_cert, _ca_cert(ca_key).public_bytes(serialization.Encoding.PEM))
        for stale in (files.server_cert, files.client_cert):
            stale.unlink(missing_ok=True)
        wrote = True
    ca_key_loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    if not isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} is not an ECDSA key")
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    if not (files.server_cert.exists() and files.server_key.exists()):
        _issue(files.server_cert, files.server_key, ca_cert, ca_key_loaded, "acb broker",
               list(hosts or default_hosts()), ExtendedKeyUsageOID.SERVER_AUTH)
        wrote = True
    if not (files.client_cert.exists() and files.client_key.exists()):
        _issue(files.client_cert, files.client_key, ca_cert, ca_key_loaded, "acb replica", [],
               ExtendedKeyUsageOID.CLIENT_AUTH)
        wrote = True
    return files, wrote


def _now() -> datetime.datetime:
    # A little in the past, so a peer whose clock is slightly behind still accepts the certificate.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ACB"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = _name("acb broker CA")
    now = _now()
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           common: str, hosts: list[str], usage: x509.ObjectIdentifier) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Write beside and rename, so a reader never sees half a file; keys are 0600 from the start.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
