"""The spec of each resource kind: Istio, Gateway API and Kubernetes shapes read into the model."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network

from weft.model import (
    API_GROUP,
    RETRY_ON_CONDITIONS,
    AuthorizationAction,
    AuthorizationPolicy,
    BackendRef,
    Condition,
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    ExtensionRef,
    FaultInjection,
    HeaderMatch,
    HeaderMatchType,
    HeaderModifier,
    HTTPRoute,
    Kind,
    LoadBalancerPolicy,
    Metadata,
    MutualTLSMode,
    Namespace,
    Operation,
    OutlierDetection,
    ParentRef,
    PathMatch,
    PathMatchType,
    PathRewrite,
    PeerAuthentication,
    PolicyTargetReference,
    RateLimit,
    RequestRedirect,
    Resource,
    RouteFilter,
    RouteMatch,
    RouteRetry,
    RouteRule,
    RouteTimeouts,
    Rule,
    Service,
    ServicePort,
    Source,
    Subset,
    TrafficPolicy,
    URLRewrite,
    Waypoint,
    WaypointTrafficType,
    Workload,
    WorkloadSelector,
)
from weft.resources.fields import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    FieldError,
    Fields,
    describe,
    to_ipv4_network,
)

SpecParser = Callable[[Metadata, Fields | None], Resource]

# Which apiVersions each kind accepts: the ones operators' existing YAML is written against.
API_VERSIONS: Mapping[Kind, tuple[str, ...]] = {
    Kind.NAMESPACE: ("v1",),
    Kind.SERVICE: ("v1",),
    Kind.WORKLOAD: ("weft.io/v1",),
    Kind.WAYPOINT: ("weft.io/v1",),
    Kind.FAULT_INJECTION: ("weft.io/v1",),
    Kind.RATE_LIMIT: ("weft.io/v1",),
    Kind.AUTHORIZATION_POLICY: ("security.istio.io/v1", "security.istio.io/v1beta1"),
    Kind.PEER_AUTHENTICATION: ("security.istio.io/v1", "security.istio.io/v1beta1"),
    Kind.HTTP_ROUTE: ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    Kind.DESTINATION_RULE: (
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    ),
}

_HTTP_METHOD = re.compile(r"^[A-Z]+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


def _spec(spec: Fields | None, path: str = "spec") -> Fields:
    if spec is None:
        raise FieldError(path, "a mapping (required)")
    return spec


def _selector(f: Fields, name: str = "selector") -> WorkloadSelector | None:
    sel = f.opt_fields(name)
    if sel is None:
        return None
    selector = WorkloadSelector(sel.string_map("matchLabels", labels=True))
    sel.done()
    return selector


def _regex(path: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as err:
        raise FieldError(path, f"a valid regular expression ({err})", value) from None


# --- Namespace, Workload, Service, Waypoint -------------------------------------------------


def parse_namespace(meta: Metadata, spec: Fields | None) -> Namespace:
    if spec is not None:
        spec.done()  # Kubernetes' spec.finalizers and friends mean nothing here
    return Namespace(meta)


def parse_workload(meta: Metadata, spec: Fields | None) -> Workload:
    f = _spec(spec)
    ports: dict[str, int] = {}
    port_map = f.opt_fields("ports")
    if port_map is not None:
        for port_name in port_map.names():
            ports[str(port_name)] = port_map.port(str(port_name))
    workload = Workload(
        meta,
        address=f.ipv4("address"),
        node=f.text("node", pattern=DNS_SUBDOMAIN, what="a node name (lowercase DNS name)"),
        service_account=f.opt_text(
            "serviceAccount", pattern=DNS_SUBDOMAIN, what="a service account name"
        )
        or "default",
        labels=f.string_map("labels", labels=True),
        ports=ports,
    )
    f.done()
    return workload


def _service_port(f: Fields) -> ServicePort:
    port = f.port("port")
    target = f.raw("targetPort")
    if target is None:
        target_port = port
    elif isinstance(target, int) and not isinstance(target, bool) and 1 <= target <= 65535:
        target_port = target
    else:
        # Named target ports need a per-workload lookup that Weft does not do.
        raise FieldError(
            f.child_path("targetPort"), "a port number from 1 to 65535", describe(target)
        )
    protocol = f.opt_text("protocol") or "TCP"
    if protocol != "TCP":
        raise FieldError(f.child_path("protocol"), "'TCP' (the mesh carries TCP only)", protocol)
    sp = ServicePort(
        port=port,
        target_port=target_port,
        name=f.opt_text("name", pattern=DNS_LABEL, what="a port name") or "",
        protocol=protocol,
        app_protocol=f.opt_text("appProtocol") or "",
    )
    f.done()
    return sp


def parse_service(meta: Metadata, spec: Fields | None) -> Service:
    f = _spec(spec)
    vip_text = f.raw("clusterIP")
    vip = None if vip_text in (None, "None") else f.opt_ipv4("clusterIP")
    type_ = f.opt_text("type") or "ClusterIP"
    if type_ != "ClusterIP":
        raise FieldError(f.child_path("type"), "'ClusterIP'", type_)
    ports = tuple(_service_port(p) for p in f.list_of_fields("ports"))
    if not ports:
        raise FieldError(f.child_path("ports"), "at least one port")
    seen = set()
    for i, p in enumerate(ports):
        if p.port in seen:
            raise FieldError(
                f"{f.child_path('ports')}[{i}].port", "a port not listed twice", p.port
            )
        seen.add(p.port)
    service = Service(meta, vip=vip, ports=ports, selector=f.string_map("selector", labels=True))
    f.done()
    return service


def parse_waypoint(meta: Metadata, spec: Fields | None) -> Waypoint:
    f = _spec(spec)
    waypoint = Waypoint(
        meta,
        address=f.ipv4("address"),
        node=f.text("node", pattern=DNS_SUBDOMAIN, what="a node name (lowercase DNS name)"),
        service_account=f.opt_text(
            "serviceAccount", pattern=DNS_SUBDOMAIN, what="a service account name"
        )
        or "waypoint",
        port=f.opt_port("port") or 15008,
        traffic_type=f.opt_enum("trafficType", WaypointTrafficType) or WaypointTrafficType.SERVICE,
    )
    f.done()
    return waypoint


# --- AuthorizationPolicy, PeerAuthentication -------------------------------------------------


def _source(f: Fields) -> Source:
    def cidrs(name: str) -> tuple[IPv4Network, ...]:
        return tuple(to_ipv4_network(p, v) for p, v in f.items(name))

    source = Source(
        principals=f.str_list("principals"),
        not_principals=f.str_list("notPrincipals"),
        namespaces=f.str_list("namespaces"),
        not_namespaces=f.str_list("notNamespaces"),
        ip_blocks=cidrs("ipBlocks"),
        not_ip_blocks=cidrs("notIpBlocks"),
    )
    f.done()
    return source


def _ports(f: Fields, name: str) -> tuple[int, ...]:
    out = []
    # Istio writes ports as strings ("8080"); accept numbers too.
    for path, item in f.items(name):
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not text.isdigit() or not 1 <= int(text) <= 65535:
            raise FieldError(path, "a port number from 1 to 65535", describe(item))
        out.append(int(text))
    return tuple(out)


def _operation(f: Fields) -> Operation:
    operation = Operation(
        hosts=f.str_list("hosts"),
        not_hosts=f.str_list("notHosts"),
        ports=_ports(f, "ports"),
        not_ports=_ports(f, "notPorts"),
        methods=f.str_list("methods"),
        not_methods=f.str_list("notMethods"),
        paths=f.str_list("paths"),
        not_paths=f.str_list("notPaths"),
    )
    f.done()
    return operation


def _rule(f: Fields) -> Rule:
    sources = []
    for entry in f.list_of_fields("from"):
        sources.append(_source(entry.fields("source")))
        entry.done()
    operations = []
    for entry in f.list_of_fields("to"):
        operations.append(_operation(entry.fields("operation")))
        entry.done()
    conditions = []
    for entry in f.list_of_fields("when"):
        cond = Condition(entry.text("key"), entry.str_list("values"), entry.str_list("notValues"))
        if not cond.values and not cond.not_values:
            raise FieldError(entry.path, "'values' or 'notValues'")
        entry.done()
        conditions.append(cond)
    f.done()
    return Rule(tuple(sources), tuple(operations), tuple(conditions))


def _target_refs(f: Fields) -> tuple[PolicyTargetReference, ...]:
    refs = []
    for ref in f.list_of_fields("targetRefs"):
        kind = ref.text("kind")
        if kind not in ("Service", "Waypoint"):
            raise FieldError(ref.child_path("kind"), "'Service' or 'Waypoint'", kind)
        refs.append(PolicyTargetReference(kind, ref.text("name"), ref.opt_text("group") or ""))
        ref.done()
    return tuple(refs)


def parse_authorization_policy(meta: Metadata, spec: Fields | None) -> AuthorizationPolicy:
    if spec is None:  # an empty spec is valid in Istio: ALLOW nothing, i.e. deny all
        return AuthorizationPolicy(meta)
    f = spec
    action = f.opt_enum("action", AuthorizationAction) or AuthorizationAction.ALLOW
    selector = _selector(f)
    target_refs = _target_refs(f)
    if f.has("targetRef"):
        target_refs += _target_refs(Fields({"targetRefs": [f.raw("targetRef")]}, f.path))
    if selector is not None and target_refs:
        raise FieldError(f.child_path("targetRefs"), "either 'selector' or 'targetRefs', not both")
    policy = AuthorizationPolicy(
        meta,
        action=action,
        selector=selector,
        target_refs=target_refs,
        rules=tuple(_rule(r) for r in f.list_of_fields("rules")),
    )
    f.done()
    return policy


def _mtls_mode(f: Fields | None) -> MutualTLSMode | None:
    if f is None:
        return None
    mode_text = f.raw("mode")
    f.done()
    if mode_text in (None, "UNSET"):
        return None
    for mode in MutualTLSMode:
        if mode.value == mode_text:
            return mode
    raise FieldError(f.child_path("mode"), "'STRICT', 'PERMISSIVE' or 'UNSET'", describe(mode_text))


def parse_peer_authentication(meta: Metadata, spec: Fields | None) -> PeerAuthentication:
    if spec is None:
        return PeerAuthentication(meta)
    f = spec
    port_level: dict[int, MutualTLSMode] = {}
    # YAML reads an unquoted `8080:` key as a number, JSON as a string: accept both.
    levels = f.opt_fields("portLevelMtls", int_keys=True)
    if levels is not None:
        for port_text in levels.names():
            port_path = levels.child_path(str(port_text))
            if not str(port_text).isdigit() or not 1 <= int(port_text) <= 65535:
                raise FieldError(port_path, "a port number key", port_text)
            mode = _mtls_mode(levels.fields(port_text))
            if mode is not None:
                port_level[int(port_text)] = mode
    pa = PeerAuthentication(meta, _mtls_mode(f.opt_fields("mtls")), _selector(f), port_level)
    f.done()
    return pa


# --- HTTPRoute, FaultInjection, RateLimit, DestinationRule -----------------------------------


def _route_match(f: Fields) -> RouteMatch:
    path = None
    pf = f.opt_fields("path")
    if pf is not None:
        ptype = pf.opt_enum("type", PathMatchType) or PathMatchType.PREFIX
        value = pf.opt_text("value") or "/"
        if ptype is PathMatchType.REGEX:
            _regex(pf.child_path("value"), value)
        elif not value.startswith("/"):
            raise FieldError(pf.child_path("value"), "a path starting with '/'", value)
        pf.done()
        path = PathMatch(ptype, value)

    def header_matches(name: str) -> tuple[HeaderMatch, ...]:
        out = []
        for h in f.list_of_fields(name):
            htype = h.opt_enum("type", HeaderMatchType) or HeaderMatchType.EXACT
            match = HeaderMatch(
                h.text("name", pattern=_HEADER_NAME, what="a header name"), h.text("value"), htype
            )
            if htype is HeaderMatchType.REGEX:
                _regex(h.child_path("value"), match.value)
            h.done()
            out.append(match)
        return tuple(out)

    match = RouteMatch(
        path=path,
        method=f.opt_text("method", pattern=_HTTP_METHOD, what="an HTTP method such as 'GET'"),
        headers=header_matches("headers"),
        query_params=header_matches("queryParams"),
    )
    f.done()
    return match


def _header_modifier(f: Fields) -> HeaderModifier:
    def pairs(name: str) -> dict[str, str]:
        out = {}
        for h in f.list_of_fields(name):
            out[h.text("name", pattern=_HEADER_NAME, what="a header name")] = h.text("value")
            h.done()
        return out

    modifier = HeaderModifier(set=pairs("set"), add=pairs("add"), remove=f.str_list("remove"))
    f.done()
    return modifier


def _path_rewrite(f: Fields | None) -> PathRewrite | None:
    if f is None:
        return None
    kind = f.text("type")
    if kind == "ReplaceFullPath":
        rewrite = PathRewrite(replace_full_path=f.text("replaceFullPath"))
    elif kind == "ReplacePrefixMatch":
        rewrite = PathRewrite(replace_prefix_match=f.text("replacePrefixMatch"))
    else:
        raise FieldError(f.child_path("type"), "'ReplaceFullPath' or 'ReplacePrefixMatch'", kind)
    f.done()
    return rewrite


_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}


def _route_filter(f: Fields) -> RouteFilter:
    ftype = f.text("type")
    if ftype not in _FILTER_FIELDS:
        raise FieldError(
            f.child_path("type"), "one of " + ", ".join(repr(t) for t in _FILTER_FIELDS), ftype
        )
    body = f.fields(_FILTER_FIELDS[ftype])
    if ftype == "RequestHeaderModifier":
        out = RouteFilter(request_header_modifier=_header_modifier(body))
    elif ftype == "ResponseHeaderModifier":
        out = RouteFilter(response_header_modifier=_header_modifier(body))
    elif ftype == "RequestRedirect":
        status = body.opt_int("statusCode", low=301, high=308) or 302
        if status not in (301, 302, 303, 307, 308):
            raise FieldError(body.child_path("statusCode"), "301, 302, 303, 307 or 308", status)
        out = RouteFilter(
            request_redirect=RequestRedirect(
                scheme=body.opt_text("scheme"),
                hostname=body.opt_text("hostname"),
                path=_path_rewrite(body.opt_fields("path")),
                port=body.opt_port("port"),
                status_code=status,
            )
        )
        body.done()
    elif ftype == "URLRewrite":
        out = RouteFilter(
            url_rewrite=URLRewrite(
                body.opt_text("hostname"), _path_rewrite(body.opt_fields("path"))
            )
        )
        body.done()
    else:
        group = body.text("group")
        if group != API_GROUP:
            raise FieldError(body.child_path("group"), f"'{API_GROUP}'", group)
        kind = body.text("kind")
        if kind not in (Kind.FAULT_INJECTION.value, Kind.RATE_LIMIT.value):
            raise FieldError(body.child_path("kind"), "'FaultInjection' or 'RateLimit'", kind)
        out = RouteFilter(
            extension_ref=ExtensionRef(
                Kind(kind), body.text("name", pattern=DNS_SUBDOMAIN, what="a resource name")
            )
        )
        body.done()
    f.done()
    return out


def _weight(f: Fields) -> int:
    weight = f.opt_int("weight", high=1_000_000)
    return 1 if weight is None else weight


def _retry_on(f: Fields) -> tuple[tuple[str, ...], list[int]]:
    """Istio's `retryOn`: comma-separated conditions, and status codes (which Istio turns into
    retriable-status-codes), e.g. "connect-failure,unavailable,503"."""
    text = f.opt_text("retryOn")
    if text is None:
        return (), []
    path = f.child_path("retryOn")
    conditions: list[str] = []
    codes: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if item.isdigit() and 400 <= int(item) <= 599:
            codes.append(int(item))
        elif item in RETRY_ON_CONDITIONS:
            conditions.append(item)
        else:
            raise FieldError(
                path,
                f"comma-separated retry conditions ({', '.join(RETRY_ON_CONDITIONS)}) or HTTP "
                f"status codes from 400 to 599; {item!r} is none of these",
                describe(text),
            )
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return tuple(dict.fromkeys(conditions)), codes


def _route_rule(f: Fields) -> RouteRule:
    backends = []
    for b in f.list_of_fields("backendRefs"):
        kind = b.opt_text("kind") or "Service"
        if kind != "Service" or (b.opt_text("group") or "") != "":
            raise FieldError(b.child_path("kind"), "'Service' in the core group", kind)
        backends.append(
            BackendRef(
                name=b.text("name", pattern=DNS_LABEL, what="a Service name"),
                port=b.opt_port("port"),
                namespace=b.opt_text("namespace", pattern=DNS_LABEL, what="a namespace name") or "",
                weight=_weight(b),
            )
        )
        b.done()
    timeouts = None
    tf = f.opt_fields("timeouts")
    if tf is not None:
        timeouts = RouteTimeouts(tf.opt_duration("request"), tf.opt_duration("backendRequest"))
        tf.done()
    retry = None
    rf = f.opt_fields("retry")
    if rf is not None:
        codes = []
        for path, code in rf.items("codes"):
            if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
                raise FieldError(path, "an HTTP status code from 400 to 599", describe(code))
            codes.append(code)
        retry_on, listed_codes = _retry_on(rf)
        retry = RouteRetry(
            attempts=rf.opt_int("attempts", high=100) or 0,
            codes=tuple(dict.fromkeys(codes + listed_codes)),
            backoff=rf.opt_duration("backoff"),
            per_try_timeout=rf.opt_duration("perTryTimeout"),
            retry_on=retry_on,
        )
        rf.done()
    rule = RouteRule(
        matches=tuple(_route_match(m) for m in f.list_of_fields("matches")),
        filters=tuple(_route_filter(x) for x in f.list_of_fields("filters")),
        backend_refs=tuple(backends),
        timeouts=timeouts,
        retry=retry,
    )
    f.done()
    return rule


def parse_http_route(meta: Metadata, spec: Fields | None) -> HTTPRoute:
    f = _spec(spec)
    parents = []
    for p in f.list_of_fields("parentRefs"):
        kind = p.opt_text("kind") or "Service"
        if kind not in ("Service", "Waypoint"):
            # Mesh (GAMMA) routes attach to Services; Gateways are not part of Weft.
            raise FieldError(
                p.child_path("kind"), "'Service' (mesh routes attach to Services)", kind
            )
        parents.append(
            ParentRef(
                name=p.text("name", pattern=DNS_LABEL, what="a Service name"),
                kind=kind,
                group=p.opt_text("group") or "",
                namespace=p.opt_text("namespace", pattern=DNS_LABEL, what="a namespace name") or "",
                port=p.opt_port("port"),
            )
        )
        p.done()
    if not parents:
        raise FieldError(f.child_path("parentRefs"), "at least one parent Service")
    route = HTTPRoute(
        meta,
        parent_refs=tuple(parents),
        hostnames=f.str_list("hostnames"),
        rules=tuple(_route_rule(r) for r in f.list_of_fields("rules")),
    )
    f.done()
    return route


def _percentage(f: Fields) -> float:
    pf = f.opt_fields("percentage")
    if pf is None:
        return 100.0
    value = pf.opt_float("value", low=0.0, high=100.0)
    pf.done()
    return 100.0 if value is None else value


def parse_fault_injection(meta: Metadata, spec: Fields | None) -> FaultInjection:
    f = _spec(spec)
    delay_seconds, delay_pct, abort_status, abort_pct = None, 100.0, None, 100.0
    delay = f.opt_fields("delay")
    if delay is not None:
        delay_seconds = delay.opt_duration("fixedDelay")
        if delay_seconds is None:
            raise FieldError(delay.child_path("fixedDelay"), "a duration (required)")
        delay_pct = _percentage(delay)
        delay.done()
    abort = f.opt_fields("abort")
    if abort is not None:
        abort_status = abort.integer("httpStatus", low=200, high=599)
        abort_pct = _percentage(abort)
        abort.done()
    if delay is None and abort is None:
        raise FieldError(f.path, "'delay' or 'abort'")
    f.done()
    return FaultInjection(meta, delay_seconds, delay_pct, abort_status, abort_pct)


_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def parse_rate_limit(meta: Metadata, spec: Fields | None) -> RateLimit:
    f = _spec(spec)
    requests = f.integer("requests", low=1)
    unit = f.opt_text("unit") or "second"
    if unit not in _UNITS:
        raise FieldError(f.child_path("unit"), "'second', 'minute' or 'hour'", unit)
    burst = f.opt_int("burst", low=1) or requests
    f.done()
    return RateLimit(meta, requests, _UNITS[unit], burst)


def _traffic_policy(f: Fields | None) -> TrafficPolicy:
    if f is None:
        return TrafficPolicy()
    lb, chash = LoadBalancerPolicy.ROUND_ROBIN, None
    lbf = f.opt_fields("loadBalancer")
    if lbf is not None:
        simple = lbf.raw("simple")
        hf = lbf.opt_fields("consistentHash")
        if hf is not None:
            chash = ConsistentHash(hf.opt_text("httpHeaderName"), bool(hf.opt_bool("useSourceIp")))
            if chash.http_header_name is None and not chash.use_source_ip:
                raise FieldError(hf.path, "'httpHeaderName' or 'useSourceIp: true'")
            hf.done()
            lb = LoadBalancerPolicy.CONSISTENT_HASH
        elif simple is not None:
            choices = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
            if simple not in choices:
                raise FieldError(
                    lbf.child_path("simple"),
                    " or ".join(repr(c) for c in choices),
                    describe(simple),
                )
            lb = LoadBalancerPolicy(simple)
        lbf.done()
    pool = None
    cp = f.opt_fields("connectionPool")
    if cp is not None:
        tcp, http = cp.opt_fields("tcp"), cp.opt_fields("http")
        pool = ConnectionPool(
            max_connections=tcp.opt_int("maxConnections", low=1) if tcp else None,
            connect_timeout=tcp.opt_duration("connectTimeout") if tcp else None,
            http1_max_pending_requests=http.opt_int("http1MaxPendingRequests", low=1)
            if http
            else None,
            http2_max_requests=http.opt_int("http2MaxRequests", low=1) if http else None,
            max_requests_per_connection=http.opt_int("maxRequestsPerConnection", low=1)
            if http
            else None,
            max_retries=http.opt_int("maxRetries") if http else None,
        )
        for part in (tcp, http, cp):
            if part is not None:
                part.done()
    outlier = None
    od = f.opt_fields("outlierDetection")
    if od is not None:
        outlier = OutlierDetection(
            consecutive_5xx_errors=od.opt_int("consecutive5xxErrors"),
            consecutive_gateway_errors=od.opt_int("consecutiveGatewayErrors"),
            interval=od.opt_duration("interval") or 10.0,
            base_ejection_time=od.opt_duration("baseEjectionTime") or 30.0,
            max_ejection_percent=od.opt_int("maxEjectionPercent", high=100) or 10,
        )
        od.done()
    f.done()
    return TrafficPolicy(lb, chash, pool, outlier)


def parse_destination_rule(meta: Metadata, spec: Fields | None) -> DestinationRule:
    f = _spec(spec)
    subsets = []
    for s in f.list_of_fields("subsets"):
        subsets.append(
            Subset(
                s.text("name", pattern=DNS_LABEL, what="a subset name"),
                s.string_map("labels", labels=True),
            )
        )
        s.done()
    rule = DestinationRule(
        meta,
        host=f.text("host", pattern=DNS_SUBDOMAIN, what="a service host name"),
        traffic_policy=_traffic_policy(f.opt_fields("trafficPolicy")),
        subsets=tuple(subsets),
    )
    f.done()
    return rule


SPEC_PARSERS: Mapping[Kind, SpecParser] = {
    Kind.NAMESPACE: parse_namespace,
    Kind.WORKLOAD: parse_workload,
    Kind.SERVICE: parse_service,
    Kind.WAYPOINT: parse_waypoint,
    Kind.AUTHORIZATION_POLICY: parse_authorization_policy,
    Kind.PEER_AUTHENTICATION: parse_peer_authentication,
    Kind.HTTP_ROUTE: parse_http_route,
    Kind.DESTINATION_RULE: parse_destination_rule,
    Kind.FAULT_INJECTION: parse_fault_injection,
    Kind.RATE_LIMIT: parse_rate_limit,
}
