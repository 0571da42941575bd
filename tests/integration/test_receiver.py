"""`nevent-dispatch listen`: the local receiver over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from nevent_dispatch.errors import DispatchError
from nevent_dispatch.receiver import make_ssl_context, serve
from nevent_dispatch.wire import signing
from nevent_dispatch.wire.samples import sample_envelope

SECRET = "whsec_k5EKJQnf9sMX2vYzJdHG3L8pR"
DELIVERY = "01234567-89ab-cdef-0123-456789abcdef"


@dataclass
class Receiver:
    url: str
    out: io.StringIO
    first_line: str

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()[1:]


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[Receiver]:
    """Run serve() on a free port until the block exits, whatever happens in it."""
    out = io.StringIO()
    ready, stop = asyncio.Event(), asyncio.Event()
    kwargs.setdefault("secret", SECRET)
    task = asyncio.create_task(
        serve(host="127.0.0.1", port=0, out=out, ready=ready, stop=stop, **kwargs),
        name="listen",
    )
    try:
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises what serve() raised
        assert ready.is_set(), "receiver did not start"
        first = out.getvalue().splitlines()[0]
        url = orjson.loads(first)["listening"] if kwargs.get("json_lines") else first.split()[2]
        yield Receiver(url=url, out=out, first_line=first)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


@pytest.fixture
def make_receiver() -> Callable[..., contextlib.AbstractAsyncContextManager[Receiver]]:
    return running


def signed_headers(body: bytes, *, secret: str = SECRET, t: int | None = None) -> dict[str, str]:
    event = orjson.loads(body)
    return {
        "Content-Type": "application/json",
        "User-Agent": signing.USER_AGENT,
        signing.SIGNATURE_HEADER: signing.sign(secret, int(time.time()) if t is None else t, body),
        signing.EVENT_HEADER: event["type"],
        signing.DELIVERY_HEADER: DELIVERY,
    }


def event_body(event_type: str = "purchase.completed", event_id: str = "evt_0123") -> bytes:
    return orjson.dumps(sample_envelope(event_type, "org_abcdefghijk", event_id=event_id))


async def post(
    url: str, body: bytes, headers: dict[str, str], **kwargs: Any
) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/webhooks/nevent", data=body, headers=headers, **kwargs) as r:
            return r.status, await r.text()


async def test_valid_signature_is_answered_200_and_printed(make_receiver: Any) -> None:
    """A correctly signed delivery gets 200 OK and one line naming it as valid."""
    async with make_receiver() as receiver:
        body = event_body()
        assert await post(receiver.url, body, signed_headers(body)) == (200, "OK")
    assert receiver.first_line == f"listening on {receiver.url} (signature check: on)"
    assert receiver.url.startswith("http://127.0.0.1:")
    [line] = receiver.lines()
    assert "POST /webhooks/nevent" in line
    assert "purchase.completed  evt_0123" in line
    assert f"delivery={DELIVERY}" in line
    assert "signature valid" in line
    assert line.endswith("-> 200")


async def test_wrong_secret_is_answered_401(make_receiver: Any) -> None:
    """A request signed with another secret is refused and printed as INVALID."""
    async with make_receiver() as receiver:
        body = event_body()
        status, text = await post(receiver.url, body, signed_headers(body, secret="whsec_x"))
    assert (status, text) == (401, "invalid signature")
    [line] = receiver.lines()
    assert "signature INVALID (invalid signature)" in line and line.endswith("-> 401")
    assert SECRET not in receiver.out.getvalue()


async def test_stale_timestamp_is_answered_401(make_receiver: Any) -> None:
    """A correctly signed but old request is refused as too old."""
    async with make_receiver() as receiver:
        body = event_body()
        headers = signed_headers(body, t=int(time.time()) - 3600)
        assert await post(receiver.url, body, headers) == (401, "timestamp too old")
    assert "INVALID (timestamp too old)" in receiver.lines()[0]


async def test_missing_signature_header_is_answered_401(make_receiver: Any) -> None:
    """With a secret configured, an unsigned request is malformed."""
    async with make_receiver() as receiver:
        body = event_body()
        headers = signed_headers(body)
        del headers[signing.SIGNATURE_HEADER]
        status, text = await post(receiver.url, body, headers)
    assert status == 401 and text.startswith("malformed signature header")


async def test_without_secret_signatures_are_unchecked(make_receiver: Any) -> None:
    """No secret: the body is still parsed and printed, the signature marked unchecked."""
    async with make_receiver(secret=None) as receiver:
        body = event_body("fan.created", "evt_9")
        headers = signed_headers(body, secret="whsec_whatever")
        assert await post(receiver.url, body, headers) == (200, "OK")
    assert receiver.first_line.endswith("(signature check: off)")
    [line] = receiver.lines()
    assert "fan.created  evt_9" in line and "signature unchecked" in line


async def test_body_that_is_not_a_json_object_is_answered_400(make_receiver: Any) -> None:
    """Unparseable bodies are refused even without a secret."""
    async with make_receiver(secret=None) as receiver:
        status, text = await post(receiver.url, b"not json", {})
    assert (status, text) == (400, "body is not a JSON object")
    assert "-> 400 (body is not a JSON object)" in receiver.lines()[0]


async def test_statuses_cycle_for_accepted_requests(make_receiver: Any) -> None:
    """statuses=[500, 200] answers 500, 200, 500; a refused request does not use a turn."""
    async with make_receiver(statuses=[500, 200]) as receiver:
        body = event_body()
        seen = [(await post(receiver.url, body, signed_headers(body)))[0] for _ in range(2)]
        bad = signed_headers(body, secret="whsec_x")
        seen.append((await post(receiver.url, body, bad))[0])
        seen.append((await post(receiver.url, body, signed_headers(body)))[0])
    assert seen == [500, 200, 401, 500]
    assert receiver.lines()[0].endswith("-> 500")


async def test_fail_rate_one_always_fails(make_receiver: Any) -> None:
    """fail_rate=1.0 turns every accepted request into a 500."""
    async with make_receiver(fail_rate=1.0, seed=7) as receiver:
        body = event_body()
        for _ in range(3):
            assert (await post(receiver.url, body, signed_headers(body)))[0] == 500


async def test_seeded_fail_rate_is_reproducible(make_receiver: Any) -> None:
    """The same seed gives the same sequence of answers."""
    runs = []
    for _ in range(2):
        async with make_receiver(secret=None, fail_rate=0.5, seed=42) as receiver:
            body = event_body()
            runs.append([(await post(receiver.url, body, {}))[0] for _ in range(12)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


async def test_batch_is_printed_with_its_count_and_each_event(make_receiver: Any) -> None:
    """A batch body prints its event count, then one indented line per event."""
    events = [
        sample_envelope("fan.created", "org_a", event_id="evt_a1"),
        sample_envelope("purchase.completed", "org_a", event_id="evt_a2"),
        sample_envelope("email.sent", "org_a", event_id="evt_a3"),
    ]
    body = orjson.dumps({"type": "batch", "events": events})
    async with make_receiver() as receiver:
        assert (await post(receiver.url, body, signed_headers(body)))[0] == 200
    head, *items = receiver.lines()
    assert "batch (3 events)" in head and "signature valid" in head
    assert items == [
        "    fan.created  evt_a1",
        "    purchase.completed  evt_a2",
        "    email.sent  evt_a3",
    ]


async def test_json_lines_mode(make_receiver: Any) -> None:
    """json_lines prints a JSON listening line, then one JSON object per request."""
    async with make_receiver(json_lines=True) as receiver:
        body = event_body()
        await post(receiver.url, body, signed_headers(body))
        await post(receiver.url, body, signed_headers(body, secret="whsec_x"))
    assert orjson.loads(receiver.first_line) == {"listening": receiver.url, "ca_file": None}
    good, bad = (orjson.loads(line) for line in receiver.lines())
    assert list(good) == [
        "received_at", "path", "event_type", "delivery_id",
        "signature", "reason", "status", "events", "body",
    ]  # fmt: skip
    assert good["path"] == "/webhooks/nevent"
    assert good["event_type"] == "purchase.completed"
    assert good["delivery_id"] == DELIVERY
    assert (good["signature"], good["reason"], good["status"]) == ("valid", None, 200)
    assert good["events"] == [{"id": "evt_0123", "type": "purchase.completed"}]
    assert good["body"] == orjson.loads(body)
    assert good["received_at"].endswith("Z")
    assert (bad["signature"], bad["reason"], bad["status"]) == ("invalid", "invalid signature", 401)


async def test_only_post_is_accepted(make_receiver: Any) -> None:
    """Other methods get 405 and print nothing."""
    async with make_receiver() as receiver:
        async with aiohttp.ClientSession() as session:
            async with session.get(receiver.url + "/") as response:
                assert response.status == 405
    assert receiver.lines() == []


async def test_port_in_use_is_a_dispatch_error() -> None:
    """Binding an occupied port fails with one clear line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(DispatchError, match=f"listen: cannot bind 127.0.0.1:{port}"):
            await serve(port=port, secret=None, out=io.StringIO(), stop=asyncio.Event())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"statuses": [42]}, "status must be 200-599"), ({"fail_rate": 1.5}, "fail rate")],
)
async def test_impossible_rehearsal_settings_are_refused(kwargs: Any, message: str) -> None:
    """A status that is not a final HTTP status, or a rate outside 0..1, is refused up front."""
    with pytest.raises(DispatchError, match=message):
        await serve(port=0, secret=None, out=io.StringIO(), **kwargs)


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    # What newer Pythons enable by default: the certificates must already pass it.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@needs_openssl
async def test_tls_receiver_is_trusted_through_its_ca(make_receiver: Any, tmp_path: Path) -> None:
    """tls=True serves https with a certificate that verifies against the printed ca.pem."""
    cert_dir = tmp_path / "listen-tls"
    async with make_receiver(tls=True, cert_dir=cert_dir) as receiver:
        assert receiver.url.startswith("https://127.0.0.1:")
        ca_file = cert_dir.resolve() / "ca.pem"
        assert receiver.out.getvalue().splitlines()[1] == (
            f"trust this CA: {ca_file}  (config: delivery.ca_file)"
        )
        body = event_body()
        context = client_context(ca_file)
        assert await post(receiver.url, body, signed_headers(body), ssl=context) == (200, "OK")
        # Still to 127.0.0.1, presenting the name `localhost` in SNI and verification.
        by_name = await post(
            receiver.url, body, signed_headers(body), ssl=context, server_hostname="localhost"
        )
        assert by_name[0] == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(receiver.url, body, signed_headers(body), ssl=ssl.create_default_context())
    assert stat.S_IMODE((cert_dir / "key.pem").stat().st_mode) == 0o600
    assert not (cert_dir / "ca.key").exists()


@needs_openssl
async def test_tls_json_listening_line_names_the_ca(make_receiver: Any, tmp_path: Path) -> None:
    """In json mode the listening line carries the CA path."""
    async with make_receiver(tls=True, cert_dir=tmp_path, json_lines=True) as receiver:
        assert orjson.loads(receiver.first_line)["ca_file"] == str(tmp_path.resolve() / "ca.pem")


@needs_openssl
def test_certificates_are_reused_until_they_expire(tmp_path: Path) -> None:
    """A second start reuses the files; a broken set is regenerated."""
    _, ca_file = make_ssl_context(tmp_path)
    first = ca_file.read_bytes()
    _, again = make_ssl_context(tmp_path)
    assert again == ca_file and again.read_bytes() == first
    (tmp_path / "key.pem").unlink()
    make_ssl_context(tmp_path)
    assert ca_file.read_bytes() != first


def test_tls_without_openssl_is_a_dispatch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the openssl command, --tls explains what is missing."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DispatchError, match="listen --tls needs the openssl command"):
        make_ssl_context(tmp_path / "certs")
