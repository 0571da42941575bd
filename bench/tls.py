"""The benchmark's TLS: a local CA and a certificate for 127.0.0.1, made at each run.

Owns the three PEM files the receivers serve and the daemon trusts
(``delivery.ca_file``). It uses the ``trustme`` package when the venv has it
(the ``test`` extra installs it) and otherwise the ``openssl`` command through
the same generator ``nevent-dispatch listen --tls`` uses. It must not install
anything or touch any trust store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    #: "trustme" or "openssl".
    made_with: str


def make_tls(folder: Path) -> Tls:
    """Write a CA, a leaf certificate (chain) and its key under ``folder``."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        import trustme
    except ImportError:
        return _with_openssl(folder)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    tls = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", "trustme")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    tls.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tls.key_file))
    tls.key_file.chmod(0o600)
    return tls


def _with_openssl(folder: Path) -> Tls:
    from nevent_dispatch import receiver

    _, ca_file = receiver.make_ssl_context(folder)
    return Tls(ca_file, folder / receiver.CERT_FILE, folder / receiver.KEY_FILE, "openssl")
