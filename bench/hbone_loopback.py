"""Micro-benchmark of the HBONE tunnel on loopback: pooled HBONE vs a TLS relay pair, stunnel, TCP.

Each variant puts two relay processes between a load client and its targets:

    direct:     client ------------------------------------------------> target
    tls-relay:  client -> relay (TCP in, mTLS out) -> relay (mTLS in) --> target  (handshake/conn)
    stunnel:    client -> stunnel (client mode) ----> stunnel (server) -> target  (handshake/conn)
    hbone:      client -> HbonePool + relay ---------> HboneServer -----> target  (stream/conn)

and measures one-connection bulk throughput, 1 KiB request/response latency and new connections
per second. Every load loop stops after --seconds (and a count); everything runs on 127.0.0.1 and
every process it starts is stopped at the end. Ratios are against the same run, never a constant.

    .venv/bin/python -m bench.hbone_loopback --seconds 3
    .venv/bin/python -m bench.hbone_loopback --only hbone --only stunnel --repeat 5

Request/response is timed by bench/tools/rr_client.c (built with gcc, as `weft bench` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
CLIENT_URI = "spiffe://cluster.local/ns/bench/sa/client"
SERVER_URI = "spiffe://cluster.local/ns/weft-system/sa/agent"
VARIANTS = ("direct", "tls-relay", "stunnel", "hbone")
RR_SIZE = 1024
CHUNK = 256 * 1024
ROUND = 32 * 1024 * 1024  # bulk bytes per acknowledged round


# --- throwaway PKI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    bundle: bytes
    client: tuple[bytes, bytes]  # (certificate PEM, key PEM)
    server: tuple[bytes, bytes]


def make_pki() -> Pki:
    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])

    def builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(root_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=2))
        )

    root = (
        builder(root_name, root_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )

    def leaf(uri: str) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri[-20:])]), key.public_key()
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), pem_key(key)

    return Pki(root.public_bytes(serialization.Encoding.PEM), leaf(CLIENT_URI), leaf(SERVER_URI))


# --- the processes: targets and relays (each runs its own uvloop) ---------------------------------


def _serve_forever(setup: Callable[[], Any], report: multiprocessing.connection.Connection) -> None:
    from weft.hbone.eventloop import new_event_loop

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    ports = loop.run_until_complete(setup())
    report.send(ports)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    # Relays torn down mid-connection leave tasks behind: exit without their GC warnings.
    os._exit(0)


class _Sink(asyncio.Protocol):
    """Swallows rounds of ROUND bytes and acknowledges each with one byte.

    The client times delivered bytes, not bytes handed to its kernel; a TLS relay cannot carry a
    half-close, so the end of the transfer cannot be signalled with a FIN.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = ROUND

    def data_received(self, data: bytes) -> None:
        size = len(data)
        while size:
            taken = min(size, self.pending)
            size -= taken
            self.pending -= taken
            if self.pending == 0:
                self.transport.write(b"+")  # type: ignore[attr-defined]
                self.pending = ROUND


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def targets_process(report: multiprocessing.connection.Connection) -> None:
    async def setup() -> list[int]:
        loop = asyncio.get_running_loop()
        sink = await loop.create_server(_Sink, LOOPBACK, 0)
        echo = await loop.create_server(_Echo, LOOPBACK, 0)
        return [sink.sockets[0].getsockname()[1], echo.sockets[0].getsockname()[1]]

    _serve_forever(setup, report)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    try:
        while data := await reader.read(size):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()  # TLS cannot half-close: a plain relay closes the whole connection
    except OSError:
        writer.transport.abort()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    size: int,
) -> None:
    await asyncio.gather(_pipe(a[0], b[1], size), _pipe(b[0], a[1], size))
    a[1].close()
    b[1].close()


def tls_relay_inbound_process(
    report: multiprocessing.connection.Connection, pki: Pki, targets: list[int], read_size: int
) -> None:
    """mTLS in, plain TCP out: the per-connection-handshake baseline (design.md section 9)."""
    from weft.tls import Svid, server_context

    async def setup() -> list[int]:
        context = server_context(Svid(*pki.server), pki.bundle)
        ports = []
        for target in targets:

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int = target
            ) -> None:
                upstream = await asyncio.open_connection(LOOPBACK, target, limit=read_size)
                await _splice((reader, writer), upstream, read_size)

            server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=context, limit=read_size)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    _serve_forever(setup, report)


def tls_relay_outbound_process(
    report: multiprocessing.connection.Connection, pki: Pki, peers: list[int], read_size: int
) -> None:
    from weft.tls import Svid, client_context

    async def setup() -> list[int]:
        context = client_context(Svid(*pki.client), pki.bundle)
        ports = []
        for peer in peers:

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: int = peer
            ) -> None:
                upstream = await asyncio.open_connection(
                    LOOPBACK, peer, ssl=context, server_hostname="", limit=read_size
                )
                await _splice((reader, writer), upstream, read_size)

            server = await asyncio.start_server(handle, LOOPBACK, 0, limit=read_size)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    _serve_forever(setup, report)


def hbone_inbound_process(
    report: multiprocessing.connection.Connection, pki: Pki, read_size: int
) -> None:
    from weft.hbone import HboneServer
    from weft.hbone.request import parse_authority
    from weft.tls import Svid, server_context

    async def allow(*_: object) -> bool:
        return True

    async def connect(authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = parse_authority(authority)
        return await asyncio.open_connection(host, port, limit=read_size)

    async def setup() -> list[int]:
        server = HboneServer(server_context(Svid(*pki.server), pki.bundle), allow, connect)
        await server.start(LOOPBACK, 0)
        return [server.port]

    _serve_forever(setup, report)


def hbone_outbound_process(
    report: multiprocessing.connection.Connection,
    pki: Pki,
    hbone_port: int,
    targets: list[int],
    read_size: int,
) -> None:
    from weft.hbone import HbonePool, relay
    from weft.identity import Identity
    from weft.tls import Svid, client_context

    source, destination = Identity.parse(CLIENT_URI), Identity.parse(SERVER_URI)

    async def setup() -> list[int]:
        context = client_context(Svid(*pki.client), pki.bundle)
        pool = HbonePool(lambda _: context)
        ports = []
        for target in targets:

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int = target
            ) -> None:
                stream = await pool.open_stream(
                    source, destination, (LOOPBACK, hbone_port), f"{LOOPBACK}:{target}"
                )
                await relay(stream, reader, writer, read_size=read_size)

            server = await asyncio.start_server(handle, LOOPBACK, 0, limit=read_size)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    _serve_forever(setup, report)


class Processes:
    """Children of this benchmark; all of them are stopped, by pid, on exit."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.children: list[multiprocessing.process.BaseProcess] = []
        self.commands: list[subprocess.Popen[bytes]] = []

    def start(self, target: Callable[..., None], *args: object) -> list[int]:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=target, args=(child, *args), daemon=True)
        process.start()
        self.children.append(process)
        if not parent.poll(30):
            raise RuntimeError(f"{target.__name__} did not start within 30 s")
        ports: list[int] = parent.recv()
        return ports

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.children if process.pid is not None]

    def run(self, command: list[str]) -> None:
        self.commands.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def stop(self) -> None:
        for process in self.children:
            process.terminate()
        for command in self.commands:
            command.terminate()
        for process in self.children:
            process.join(5)
        for command in self.commands:
            with contextlib.suppress(subprocess.TimeoutExpired):
                command.wait(5)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind((LOOPBACK, 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {LOOPBACK}:{port} after {timeout} s")


def start_stunnel_pair(
    processes: Processes, pki: Pki, targets: list[int], workdir: Path
) -> list[int]:
    """Two stunnel processes, client and server mode, one service per target."""
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        raise FileNotFoundError("stunnel is not installed (apt-get install stunnel4)")
    for name, (certificate, key) in (("client", pki.client), ("server", pki.server)):
        (workdir / f"{name}.pem").write_bytes(certificate + key)
        (workdir / f"{name}.pem").chmod(0o600)
    (workdir / "bundle.pem").write_bytes(pki.bundle)
    inner, outer = free_ports(len(targets)), free_ports(len(targets))
    common = f"foreground = yes\npid =\ndebug = 3\nCAfile = {workdir}/bundle.pem\n"
    tls = "sslVersion = TLSv1.3\nverifyChain = yes\nrequireCert = yes\n"
    server = common + "".join(
        f"[in{i}]\naccept = {LOOPBACK}:{inner[i]}\nconnect = {LOOPBACK}:{targets[i]}\n"
        f"cert = {workdir}/server.pem\n{tls}"
        for i in range(len(targets))
    )
    client = common + "".join(
        f"[out{i}]\nclient = yes\naccept = {LOOPBACK}:{outer[i]}\n"
        f"connect = {LOOPBACK}:{inner[i]}\ncert = {workdir}/client.pem\n{tls}"
        for i in range(len(targets))
    )
    for name, config in (("server", server), ("client", client)):
        (workdir / f"{name}.conf").write_text(config)
        processes.run([stunnel, str(workdir / f"{name}.conf")])
    for port in inner + outer:
        wait_listening(port)
    return outer


# --- the load (threads in this process; socket calls release the GIL) -----------------------------


def measure_bulk(port: int, seconds: float, max_rounds: int = 10_000) -> tuple[float, int]:
    """(Gbit/s, bytes) delivered to the sink (acknowledged rounds) on one connection."""
    chunk = memoryview(os.urandom(CHUNK))
    rounds = 0
    with socket.create_connection((LOOPBACK, port)) as sock:
        sock.settimeout(30)
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline and rounds < max_rounds:
            for _ in range(ROUND // CHUNK):
                sock.sendall(chunk)
            if sock.recv(1) != b"+":
                raise RuntimeError("the sink closed mid-transfer")
            rounds += 1
        elapsed = time.perf_counter() - start
    return rounds * ROUND * 8 / elapsed / 1e9, rounds * ROUND


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def measure_rr(
    port: int, seconds: float, count: int = 20_000, rr_client: Path | None = None
) -> tuple[float, float, int]:
    """(p50 us, p99 us, exchanges) of 1 KiB request -> 1 KiB response on one connection.

    With `rr_client` (bench/tools/rr_client.c, as `weft bench` runs it) the client is C: a
    Python client adds tens of microseconds per exchange and hides differences between relays.
    """
    if rr_client is not None:
        return _measure_rr_native(rr_client, port, seconds, count)
    message = os.urandom(RR_SIZE)
    latencies: list[float] = []
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.perf_counter() + seconds
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(message)
            received = 0
            while received < RR_SIZE:
                data = sock.recv(RR_SIZE - received)
                if not data:
                    raise RuntimeError("echo closed mid-exchange")
                received += len(data)
            latencies.append(time.perf_counter() - start)
            if start > deadline:
                break
    exchanges = len(latencies)
    latencies = latencies[10:]  # the first exchanges include connection setup
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49] * 1e6, quantiles[98] * 1e6, exchanges


def _measure_rr_native(
    rr_client: Path, port: int, seconds: float, count: int
) -> tuple[float, float, int]:
    from bench.loads.request_response import parse_rr_output

    argv = [str(rr_client), LOOPBACK, str(port), str(RR_SIZE), str(seconds), str(count)]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20, check=True)
    latencies = [ns / 1000 for ns in parse_rr_output(output.stdout)]
    quantiles = statistics.quantiles(latencies[10:], n=100)
    return quantiles[49], quantiles[98], len(latencies)


def measure_connections(port: int, seconds: float, concurrency: int = 4) -> float:
    """New connections per second, each carrying one 1 KiB exchange, `concurrency` at a time."""
    message = os.urandom(RR_SIZE)
    deadline = time.perf_counter() + seconds
    done = [0] * concurrency
    failures = [0] * concurrency

    def worker(index: int) -> None:
        while time.perf_counter() < deadline and done[index] < 200_000:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
                    sock.sendall(message)
                    received = 0
                    while received < RR_SIZE:
                        data = sock.recv(RR_SIZE)
                        if not data:
                            raise ConnectionError("closed early")
                        received += len(data)
                done[index] += 1
            except OSError:
                failures[index] += 1
                if failures[index] > 100:
                    return

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    return sum(done) / (time.perf_counter() - start)


@dataclass
class Result:
    variant: str
    bulk_gbit_s: float
    # CPU the two relays spend per GB of bulk: unlike Gbit/s it does not depend on what else
    # runs on the machine, so it compares implementations even on a busy host.
    relay_cpu_s_per_gb: float
    rr_p50_us: float
    rr_p99_us: float
    # CPU the two relays spend per 1 KiB round trip: the RR figure a busy host moves least.
    relay_cpu_us_per_rr: float
    connections_per_s: float


def _describe(result: Result) -> str:
    return (
        f"{result.variant:>10}: {result.bulk_gbit_s:6.2f} Gbit/s  "
        f"relays {result.relay_cpu_s_per_gb:5.2f} CPU-s/GB  "
        f"1KiB RR p50 {result.rr_p50_us:6.0f} us p99 {result.rr_p99_us:6.0f} us "
        f"relays {result.relay_cpu_us_per_rr:4.0f} CPU-us/RR  "
        f"{result.connections_per_s:7.0f} conn/s"
    )


def _median(results: list[Result]) -> Result:
    return Result(
        results[0].variant,
        *(
            statistics.median(getattr(result, name) for result in results)
            for name in (
                "bulk_gbit_s",
                "relay_cpu_s_per_gb",
                "rr_p50_us",
                "rr_p99_us",
                "relay_cpu_us_per_rr",
            )
        ),
        statistics.median(result.connections_per_s for result in results),
    )


def run(
    variants: list[str],
    seconds: float,
    read_size: int,
    repeat: int = 1,
    rr_client: Path | None = None,
) -> list[Result]:
    processes = Processes()
    results = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as workdir:
        try:
            pki = make_pki()
            targets = processes.start(targets_process)  # [sink, echo]
            entries: dict[str, list[int]] = {"direct": targets}
            relay_pids: dict[str, list[int]] = {"direct": []}
            if "tls-relay" in variants:
                inner = processes.start(tls_relay_inbound_process, pki, targets, read_size)
                entries["tls-relay"] = processes.start(
                    tls_relay_outbound_process, pki, inner, read_size
                )
                relay_pids["tls-relay"] = processes.pids[-2:]
            if "stunnel" in variants:
                entries["stunnel"] = start_stunnel_pair(processes, pki, targets, Path(workdir))
                relay_pids["stunnel"] = [command.pid for command in processes.commands[-2:]]
            if "hbone" in variants:
                [hbone_port] = processes.start(hbone_inbound_process, pki, read_size)
                entries["hbone"] = processes.start(
                    hbone_outbound_process, pki, hbone_port, targets, read_size
                )
                relay_pids["hbone"] = processes.pids[-2:]
            rounds: dict[str, list[Result]] = {variant: [] for variant in variants}
            # Variants take turns, round after round, so a burst of load elsewhere on the
            # machine does not land on one variant only; the medians are reported.
            for round_number in range(repeat):
                for variant in variants:
                    sink, echo = entries[variant]
                    measure_rr(echo, 0.2, 200, rr_client)  # warm up: the pool's handshake
                    cpu_before = cpu_seconds(relay_pids[variant])
                    gbit_s, delivered = measure_bulk(sink, seconds)
                    relay_cpu = cpu_seconds(relay_pids[variant]) - cpu_before
                    cpu_before = cpu_seconds(relay_pids[variant])
                    p50, p99, exchanges = measure_rr(echo, seconds, 200_000, rr_client)
                    rr_cpu = cpu_seconds(relay_pids[variant]) - cpu_before
                    rounds[variant].append(
                        Result(
                            variant,
                            gbit_s,
                            relay_cpu / (delivered / 1e9),
                            p50,
                            p99,
                            rr_cpu / exchanges * 1e6,
                            measure_connections(echo, seconds),
                        )
                    )
                    if repeat > 1:
                        print(f"round {round_number + 1} {_describe(rounds[variant][-1])}")
            for variant in variants:
                result = _median(rounds[variant])
                print(_describe(result), flush=True)
                results.append(result)
        finally:
            processes.stop()
    return results


def print_ratios(results: list[Result]) -> None:
    by_name = {result.variant: result for result in results}
    hbone = by_name.get("hbone")
    if hbone is None:
        return
    for baseline in ("stunnel", "tls-relay", "direct"):
        if (other := by_name.get(baseline)) is None:
            continue
        print(
            f"hbone / {baseline:<9}: bulk {hbone.bulk_gbit_s / other.bulk_gbit_s:5.2f}x  "
            f"relay CPU/GB {_ratio(hbone.relay_cpu_s_per_gb, other.relay_cpu_s_per_gb)}  "
            f"RR p50 {hbone.rr_p50_us / other.rr_p50_us:5.2f}x  "
            f"relay CPU/RR {_ratio(hbone.relay_cpu_us_per_rr, other.relay_cpu_us_per_rr)}  "
            f"conn/s {hbone.connections_per_s / other.connections_per_s:5.2f}x"
        )


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:5.2f}x" if theirs else "   - "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (max 30)")
    parser.add_argument("--only", choices=VARIANTS, action="append", help="repeatable")
    parser.add_argument("--read-size", type=int, default=256 * 1024, help="relay read size")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are reported")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--python-rr-client",
        action="store_true",
        help="time request/response from Python instead of bench/tools/rr_client.c",
    )
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 0.5), 30.0)
    variants = args.only or list(VARIANTS)
    if "stunnel" in variants and not (shutil.which("stunnel4") or shutil.which("stunnel")):
        print("stunnel not installed: skipping that baseline", file=sys.stderr)
        variants.remove("stunnel")
    rr_client = None
    if not args.python_rr_client:
        from bench.native import build_tools

        rr_client = build_tools().rr_client
    print(f"{os.cpu_count()} cores, {seconds:g} s per measurement, read size {args.read_size}")
    results = run(variants, seconds, args.read_size, min(max(args.repeat, 1), 10), rr_client)
    print_ratios(results)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
