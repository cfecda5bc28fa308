"""The :class:`Client`: generated stubs on one channel, with the bearer token and a default deadline."""

from __future__ import annotations

import collections
import os
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

import grpc

from wss.v1 import (
    deliveries_pb2_grpc,
    events_pb2_grpc,
    retry_policies_pb2_grpc,
    tenants_pb2_grpc,
    tokens_pb2_grpc,
    webhooks_pb2_grpc,
)

_Stub = TypeVar("_Stub")

#: Seconds a call may take when it sets no ``timeout`` of its own.
DEFAULT_TIMEOUT = 10.0


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _AuthAndDeadline(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` (unless the call brings its own) and the default deadline."""

    def __init__(self, token: Optional[str], timeout: Optional[float]):
        self._token = token
        self._timeout = timeout

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if self._token and not any(key == "authorization" for key, _ in metadata):
            metadata.append(("authorization", f"Bearer {self._token}"))
        return _CallDetails(
            details.method,
            self._timeout if details.timeout is None else details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class Client:
    """The six ``wss.v1`` services on one channel: ``tenants``, ``webhooks``, ``retry_policies``,
    ``events``, ``deliveries`` and ``tokens``.

    ``target``: ``host:port`` of the control plane (wss's ``WSS_GRPC_ADDR``). ``token``: the
    admin token, sent as ``authorization: Bearer <token>`` on every call (needed when wss runs
    with ``WSS_ADMIN_TOKEN``). ``timeout``: seconds, the deadline of every call that passes no
    ``timeout=`` itself (``None``: no deadline). ``credentials``: ``grpc.ssl_channel_credentials()``
    behind TLS; plaintext by default. ``options``: further gRPC channel options.

    Every stub method takes the request message and returns the response message; failures raise
    ``grpc.RpcError`` with ``.code()`` (``grpc.StatusCode.NOT_FOUND``, ...) and ``.details()``.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        if credentials is None:
            self._base = grpc.insecure_channel(target, options=list(options))
        else:
            self._base = grpc.secure_channel(target, credentials, options=list(options))
        #: The channel the stubs use (token and deadline added); for further generated stubs.
        self.channel = grpc.intercept_channel(self._base, _AuthAndDeadline(token, timeout))
        self.tenants = tenants_pb2_grpc.TenantServiceStub(self.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self.channel)
        self.retry_policies = retry_policies_pb2_grpc.RetryPolicyServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.deliveries = deliveries_pb2_grpc.DeliveryServiceStub(self.channel)
        self.tokens = tokens_pb2_grpc.TokenServiceStub(self.channel)

    def stub(self, stub_class: Callable[[grpc.Channel], _Stub]) -> _Stub:
        """A generated stub of any other service, on this client's channel (token and deadline
        included): ``client.stub(grpc_health.v1.health_pb2_grpc.HealthStub)``."""
        return stub_class(self.channel)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Client":
        """A client for ``$WSS_GRPC_ADDR`` (default ``127.0.0.1:50051``) with the token ``$WSS_ADMIN_TOKEN``."""
        kwargs.setdefault("token", os.environ.get("WSS_ADMIN_TOKEN") or None)
        return cls(os.environ.get("WSS_GRPC_ADDR", "127.0.0.1:50051"), **kwargs)

    def close(self) -> None:
        self._base.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"Client(target={self.target!r})"
