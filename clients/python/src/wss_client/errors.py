"""The ``google.rpc`` details every wss error carries (docs/api.md, "Errors").

Every refusal keeps its gRPC code and message, and adds in the ``grpc-status-details-bin``
trailer a ``google.rpc.ErrorInfo`` (domain ``wss``, a stable UPPER_SNAKE ``reason`` such as
``TENANT_NOT_FOUND`` or ``STALE_ETAG``) and, for INVALID_ARGUMENT, a ``google.rpc.BadRequest``
naming the request field. Branch on ``reason`` (and ``field``), never on the message::

    try:
        wss.tenants.GetTenant(tenants_pb2.GetTenantRequest(tenant_id="acme"))
    except grpc.RpcError as err:
        details = error_details(err)
        if details is not None and details.reason == "TENANT_NOT_FOUND":
            ...
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import grpc
# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class ErrorDetails:
    """What a wss error's details say."""

    #: ``ErrorInfo.reason``: stable, UPPER_SNAKE (docs/api.md lists every one); "" when absent.
    reason: str = ""
    #: ``ErrorInfo.domain``: ``wss``.
    domain: str = ""
    #: ``ErrorInfo.metadata``: ``field`` for INVALID_ARGUMENT, ``kind`` and ``id`` for NOT_FOUND.
    metadata: Dict[str, str] = field(default_factory=dict)
    #: ``BadRequest`` field violations, as (field, description).
    field_violations: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def field(self) -> str:
        """The request field an INVALID_ARGUMENT names; "" otherwise."""
        if self.field_violations:
            return self.field_violations[0][0]
        return self.metadata.get("field", "")


def error_details(err: grpc.RpcError) -> Optional[ErrorDetails]:
    """The details of a failed call's error; ``None`` when it carries none (an error made by gRPC
    itself, such as a deadline or a refused connection)."""
    trailing = getattr(err, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    raw = next((value for key, value in (metadata or ()) if key == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None
    status = status_pb2.Status.FromString(raw)
    details = ErrorDetails()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            details.reason, details.domain, details.metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            details.field_violations.extend((v.field, v.description) for v in bad.field_violations)
    return details
