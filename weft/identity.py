"""SPIFFE identities of workloads: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"

# Trust domains are DNS-like; namespaces and service accounts follow Kubernetes' DNS-1123 labels
# (plus dots for service accounts), so identities written for Istio carry over unchanged.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]{0,253}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$")


class InvalidIdentityError(ValueError):
    """A string that is not a Weft SPIFFE ID; the message says which part is wrong."""


@dataclass(frozen=True, order=True)
class Identity:
    """A workload identity; `str()` gives the SPIFFE ID used as the SVID's URI SAN."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise InvalidIdentityError(
                f"trust domain {self.trust_domain!r} is not a lowercase DNS-like name"
            )
        for part, value in (
            ("namespace", self.namespace),
            ("service account", self.service_account),
        ):
            if not _NAME.match(value):
                raise InvalidIdentityError(
                    f"{part} {value!r} must be lowercase letters, digits, '-' or '.', "
                    "starting and ending with a letter or digit"
                )

    @classmethod
    def parse(cls, uri: str) -> Identity:
        """Parse `spiffe://td/ns/NS/sa/SA`; anything else raises InvalidIdentityError."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise InvalidIdentityError(f"{uri!r} does not start with {prefix!r}")
        trust_domain, _, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidIdentityError(
                f"{uri!r} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<account>"
            )
        return cls(trust_domain, parts[1], parts[3])

    @classmethod
    def for_workload(
        cls, namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> Identity:
        return cls(trust_domain, namespace, service_account)

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri
