"""``PnsClient`` over HTTPS: a real ``pns serve`` behind a TLS-terminating proxy on loopback,
with a certificate made here (a private CA the client is told to trust).

Before the fix the second request on a kept-alive TLS connection raised ValueError: the
client's check for a connection the server had closed used ``recv(MSG_PEEK)``, which TLS
sockets refuse.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pns.client import PnsClient
from pns.model import Role

from .conftest import Server, create_tenant, unique_hk


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (certificate, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsProxy:
    """Terminates TLS on a port of its own and relays each connection to ``pns serve``, as a
    reverse proxy in front of pns would. ``drop_all()`` closes every client connection (an
    idle timeout on the proxy's side)."""

    def __init__(self, target_port: int, cert: Path, key: Path):
        self._target = target_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self._start())

    def _call(self, coro: object) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0,
                                                  ssl=self._context)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)

    def drop_all(self) -> None:
        async def drop() -> int:
            for writer in list(self._writers):
                writer.close()
            return 0
        self._call(drop())

    def stop(self) -> None:
        async def stop() -> int:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0.05)  # let the closes go out before the loop stops
            return 0
        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture()
def https(tmp_path: Path) -> Iterator[tuple[Server, TlsProxy, ssl.SSLContext]]:
    cert, key = make_certificate(tmp_path)
    server = Server(f"sqlite:///{tmp_path}/pns.db")
    proxy = TlsProxy(server.port, cert, key)
    try:
        yield server, proxy, ssl.create_default_context(cafile=str(cert))
    finally:
        proxy.stop()
        server.stop()


def test_many_requests_over_one_tls_connection(
        https: tuple[Server, TlsProxy, ssl.SSLContext]) -> None:
    """Binds, queries, lists and unbinds, 40 requests on one kept-alive TLS connection; then
    the proxy closes it (an idle timeout) and a bind, which is never resent, still succeeds
    on a new connection."""
    server, proxy, trust = https
    customer = create_tenant(server.store_url, Role.CUSTOMER, numbers=4)
    switch = create_tenant(server.store_url, Role.SWITCH)
    with PnsClient(f"https://localhost:{proxy.port}", customer.access_key,
                   customer.access_secret, ssl_context=trust) as c, \
         PnsClient(f"https://127.0.0.1:{proxy.port}", switch.access_key,
                   switch.access_secret, ssl_context=trust) as s:
        for _ in range(10):
            a, b = unique_hk("1"), unique_hk("2")
            bound = c.bind_axb(a, b, 0)
            assert bound["code"] == 0, bound
            did = bound["data"]["did"]
            assert s.query(a, did)["data"]["callee"] == b
            assert c.list_bindings(limit=1)["code"] == 0
            assert c.unbind(bound["data"]["bindId"])["code"] == 0
        assert proxy.connections == 2  # one kept-alive connection per client
        proxy.drop_all()
        a, b = unique_hk("1"), unique_hk("2")
        assert c.bind_axb(a, b, 0)["code"] == 0
        assert proxy.connections == 3


def test_an_untrusted_certificate_is_refused(
        https: tuple[Server, TlsProxy, ssl.SSLContext]) -> None:
    server, proxy, _trust = https
    customer = create_tenant(server.store_url, Role.CUSTOMER, numbers=1)
    with PnsClient(f"https://localhost:{proxy.port}", customer.access_key,
                   customer.access_secret) as c, pytest.raises(ssl.SSLCertVerificationError):
        c.list_bindings()
