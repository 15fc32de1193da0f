"""The identity CA as the store keeps it: one record, `identity-ca`, holding the CA's
certificate and private key (PEM).

Whoever can read this record can issue any PNode's or the orchestrators' identity: store
access is CA access (docs/security.md). Deployments that want the key elsewhere give
`serve --identity-ca-cert/--identity-ca-key` instead, and this record is never written.
No gRPC call returns it: no service lists or gets this kind.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import Model, Resource

#: The one record's name.
NAME = "identity-ca"


class IdentityAuthoritySpec(Model):
    certificate: str = Field(min_length=1, max_length=16384)
    key: str = Field(min_length=1, max_length=16384)


class IdentityAuthority(Resource):
    KIND: ClassVar[str] = "IdentityAuthority"
    PLURAL: ClassVar[str] = "identityauthorities"

    kind: Literal["IdentityAuthority"] = "IdentityAuthority"
    spec: IdentityAuthoritySpec
