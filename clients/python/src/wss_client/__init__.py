"""A thin client for the wss control plane.

The generated stubs and messages live in ``wss.v1`` (``wss.v1.tenants_pb2``, ...; generated from
``proto/`` by ``clients/generate``, never edited by hand). :class:`Client` puts them behind one
channel and adds the two things every call needs: ``authorization: Bearer <token>`` and a
deadline::

    from wss_client import Client
    from wss.v1 import tenants_pb2

    with Client("127.0.0.1:50051", token=os.environ["WSS_ADMIN_TOKEN"]) as wss:
        wss.tenants.CreateTenant(tenants_pb2.CreateTenantRequest(tenant_id="acme"))

:func:`error_details` reads an error's stable reason and field (docs/api.md). :func:`shard_of` and
:func:`stream_key` give the stream a producer's ``XADD`` must use when the service shards its
streams (docs/contract.md §8).
"""

from wss_client.client import DEFAULT_TIMEOUT, Client
from wss_client.errors import ErrorDetails, error_details
from wss_client.shards import shard_of, stream_key

__all__ = ["Client", "DEFAULT_TIMEOUT", "ErrorDetails", "error_details", "shard_of", "stream_key"]
