"""TLS for the span path: the receivers' ports and the agent's channels to the collectors.

Certificates and keys are PEM files (Kubernetes TLS Secrets mounted as files). They are
read once, when the receiver or the exporter starts; a file that cannot be read, or a key
that does not match its certificate, stops the start with the setting's name and why.

gRPC is imported by the functions that use it: the command line catches `TlsFileError`
without loading it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from observer.config import CollectorTlsConfig, ServerTlsConfig

if TYPE_CHECKING:
    import grpc


class TlsFileError(OSError):
    """A configured certificate, key or CA file cannot be used; the message names it."""


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"{setting} {path}: cannot be read: {error.strerror}") from None


def _checked_pair(setting: str, cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """The certificate chain and key, once `ssl` has loaded them together (gRPC would
    only find a mismatch at the first handshake)."""
    certificate = _read(f"{setting}.cert_file", cert_file)
    key = _read(f"{setting}.key_file", key_file)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        raise TlsFileError(
            f"{setting}.cert_file {cert_file} and key_file {key_file}: not a PEM certificate "
            f"and its key: {error.reason or error}"
        ) from None
    return certificate, key


def _checked_ca(setting: str, path: Path) -> bytes:
    data = _read(setting, path)
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as error:
        raise TlsFileError(f"{setting} {path}: no PEM CA certificate in it: {error}") from None
    return data


def server_context(tls: ServerTlsConfig, setting: str) -> ssl.SSLContext:
    """For an HTTP receiver (aiohttp)."""
    _checked_pair(setting, tls.cert_file, tls.key_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(
            cadata=_checked_ca(f"{setting}.client_ca_file", tls.client_ca_file).decode()
        )
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(tls: ServerTlsConfig, setting: str) -> grpc.ServerCredentials:
    import grpc

    certificate, key = _checked_pair(setting, tls.cert_file, tls.key_file)
    client_ca = (
        _checked_ca(f"{setting}.client_ca_file", tls.client_ca_file)
        if tls.client_ca_file is not None
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def grpc_channel_credentials(tls: CollectorTlsConfig, setting: str) -> grpc.ChannelCredentials:
    import grpc

    ca = _checked_ca(f"{setting}.ca_file", tls.ca_file) if tls.ca_file is not None else None
    certificate = key = None
    if tls.cert_file is not None and tls.key_file is not None:
        certificate, key = _checked_pair(setting, tls.cert_file, tls.key_file)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=certificate
    )
