"""TLS and mTLS for the gateway's front and for its backend channels, from the config's ``tls`` section.

tls:
  cert: /etc/brainhands/gateway.pem      # the front's certificate chain (PEM)
  key: /etc/brainhands/gateway.key       # and its private key
  client_ca: /etc/brainhands/callers.pem # optional: callers must present a certificate from this CA (mTLS)
  backends:
    ca: /etc/brainhands/hands-ca.pem     # dial backends over TLS, trusting this CA
    cert: /etc/brainhands/gw-client.pem  # optional: the gateway's client certificate (mTLS to backends)
    key: /etc/brainhands/gw-client.key
    server_name: hands.internal          # optional: the name backend certificates carry, if not the address
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from pydantic import Field, ValidationError, field_validator, model_validator

from hands.config import ConfigError, ConfigModel, Pem, config_error, invalid


class TlsConfigError(ConfigError):
    """A bad ``tls`` section; the message names the key (the gateway config reports it as a ConfigError)."""


def _pair(cert: bytes | None, key: bytes | None) -> None:
    if (cert is None) != (key is None):
        raise invalid("key" if key is None else "cert", "cert and key go together; set both or neither")


class BackendTls(ConfigModel):
    """How the gateway dials its backends: plaintext unless ``ca`` is set."""

    ca: Pem | None = None  # dial backends over TLS, trusting this CA
    cert: Pem | None = Field(None, repr=False)  # the gateway's client certificate (mTLS to backends)
    key: Pem | None = Field(None, repr=False)
    server_name: str | None = None  # the name backend certificates carry, if not the address

    @field_validator("server_name")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("must be a host name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BackendTls:
        _pair(self.cert, self.key)
        if self.cert is not None and self.ca is None:
            raise invalid("ca", "a client certificate needs TLS to backends; set the CA that signs them")
        return self


class TlsConfig(ConfigModel):
    """The ``tls`` section with its PEM files read once at start; None where a side is plaintext."""

    cert: Pem | None = Field(None, repr=False)  # the front's certificate chain
    key: Pem | None = Field(None, repr=False)  # and its private key
    client_ca: Pem | None = Field(None, repr=False)  # callers must present a certificate from this CA (mTLS)
    backends: BackendTls = BackendTls()

    @field_validator("backends", mode="before")
    @classmethod
    def _empty_is_plaintext(cls, value: Any) -> Any:
        return BackendTls() if value is None else value

    @model_validator(mode="after")
    def _consistent(self) -> TlsConfig:
        _pair(self.cert, self.key)
        if self.client_ca is not None and self.cert is None:
            raise invalid("client_ca", "callers can present certificates only over TLS; set tls.cert and tls.key")
        return self

    def __repr__(self) -> str:  # never print a private key
        return (
            f"TlsConfig(front={'tls' if self.cert else 'plaintext'}, mtls={self.client_ca is not None}, "
            f"backends={'tls' if self.backends.ca else 'plaintext'})"
        )

    __str__ = __repr__

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for the front port, or None for plaintext."""
        if self.cert is None:
            return None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def backend_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for channels to backends, or None for plaintext."""
        if self.backends.ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.backends.ca,
            private_key=self.backends.key,
            certificate_chain=self.backends.cert,
        )

    def backend_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to a backend, over TLS when configured."""
        credentials = self.backend_credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        opts = list(options)
        if self.backends.server_name:
            opts.append(("grpc.ssl_target_name_override", self.backends.server_name))
        return grpc.aio.secure_channel(address, credentials, options=opts)


def parse_tls(raw: Mapping[str, Any] | None, base_dir: pathlib.Path | None = None) -> TlsConfig:
    """Read the files a ``tls`` section names; a missing or unreadable file is a TlsConfigError naming the key."""
    try:
        return TlsConfig.model_validate(raw or {}, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise config_error(exc, prefix="tls", error=TlsConfigError) from None
