"""Signing and verification of X-Nevent-Signature, as the customer docs specify it."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nevent_dispatch.errors import (
    BadSignature,
    MalformedHeader,
    SignatureError,
    StaleTimestamp,
)
from nevent_dispatch.wire import signing
from nevent_dispatch.wire.signing import Signer, parse_header, sign, signature, verify

SECRET = "whsec_k5EKJQnf9sMX2vYzJdHG3L8pR"
T = 1_640_995_200
BODY = orjson.dumps(
    {
        "id": "evt_01234567891",
        "type": "fan.created",
        "created": T,
        "data": {"fan": {"id": "fan_new123", "first_name": "María", "last_name": "López"}},
        "organization_id": "org_abcdefghijk",
    }
)


def docs_signature(secret: str, timestamp: int, raw_body: str) -> str:
    """The verification snippet of the customer docs, copied as written there."""
    signed_payload = f"{timestamp}.{raw_body}"
    return hmac.new(secret.encode(), signed_payload.encode(), hashlib.sha256).hexdigest()


def test_header_constants_match_the_docs() -> None:
    """Header names and the user agent are the documented ones."""
    assert signing.SIGNATURE_HEADER == "X-Nevent-Signature"
    assert signing.EVENT_HEADER == "X-Nevent-Event"
    assert signing.DELIVERY_HEADER == "X-Nevent-Delivery"
    assert signing.USER_AGENT == "Nevent-Webhooks/1.0"


def test_sign_then_verify_returns_the_body() -> None:
    """A body signed with a secret verifies with it and comes back parsed."""
    header = sign(SECRET, T, BODY)
    assert verify(BODY, header, SECRET, now=T) == orjson.loads(BODY)


def test_sign_has_the_documented_shape() -> None:
    """sign() is `t=<int>,v1=<64 hex>` and v1 is signature()."""
    header = sign(SECRET, T, BODY)
    assert header == f"t={T},v1={signature(SECRET, T, BODY)}"
    assert len(signature(SECRET, T, BODY)) == 64


def test_signature_matches_the_docs_snippet() -> None:
    """Our digest equals the docs' Python snippet over the body as text (non-ASCII included)."""
    assert signature(SECRET, T, BODY) == docs_signature(SECRET, T, BODY.decode())


def test_verify_accepts_a_header_made_by_the_docs_snippet() -> None:
    """A receiver-side header computed independently verifies, with body as bytes or str."""
    header = f"t={T},v1={docs_signature(SECRET, T, BODY.decode())}"
    assert verify(BODY, header, SECRET, now=T)["type"] == "fan.created"
    assert verify(BODY.decode(), header, SECRET, now=T)["type"] == "fan.created"


def test_signer_matches_the_functions_and_hides_the_secret() -> None:
    """Signer(secret) signs exactly like sign() and its repr omits the secret."""
    signer = Signer(SECRET)
    assert signer.sign(T, BODY) == sign(SECRET, T, BODY)
    assert signer.signature(T, BODY) == signature(SECRET, T, BODY)
    assert SECRET not in repr(signer)


def test_signer_refuses_an_empty_secret() -> None:
    """An empty secret is a bug, not a key."""
    with pytest.raises(ValueError):
        Signer("")


def test_sign_refuses_a_float_timestamp() -> None:
    """A float t would produce a header no receiver can parse."""
    with pytest.raises(ValueError):
        sign(SECRET, 1.5, BODY)  # type: ignore[arg-type]


def test_tampered_body_is_a_bad_signature() -> None:
    """Changing one byte of the body fails verification."""
    header = sign(SECRET, T, BODY)
    with pytest.raises(BadSignature, match="invalid signature"):
        verify(BODY.replace(b"Mar", b"Maz"), header, SECRET, now=T)


def test_wrong_secret_is_a_bad_signature() -> None:
    """A header signed with another secret fails verification."""
    header = sign("whsec_other", T, BODY)
    with pytest.raises(BadSignature):
        verify(BODY, header, SECRET, now=T)


def test_tampered_timestamp_is_a_bad_signature() -> None:
    """t is part of the signed message: moving it invalidates v1."""
    v1 = signature(SECRET, T, BODY)
    with pytest.raises(BadSignature):
        verify(BODY, f"t={T + 1},v1={v1}", SECRET, now=T)


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_timestamp_outside_tolerance_is_stale(offset: int) -> None:
    """A correctly signed request too far in the past or future is refused."""
    header = sign(SECRET, T + offset, BODY)
    with pytest.raises(StaleTimestamp, match="timestamp too"):
        verify(BODY, header, SECRET, now=T)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_at_the_tolerance_edge_is_accepted(offset: int) -> None:
    """abs(now - t) == tolerance still passes."""
    assert verify(BODY, sign(SECRET, T + offset, BODY), SECRET, now=T)


def test_tolerance_is_configurable() -> None:
    """A caller can narrow the window."""
    header = sign(SECRET, T - 10, BODY)
    assert verify(BODY, header, SECRET, tolerance=10, now=T)
    with pytest.raises(StaleTimestamp):
        verify(BODY, header, SECRET, tolerance=9, now=T)


def test_signature_is_checked_before_the_timestamp() -> None:
    """A forged, stale request reports a bad signature, revealing nothing about the clock."""
    header = sign("whsec_forged", T - 10_000, BODY)
    with pytest.raises(BadSignature):
        verify(BODY, header, SECRET, now=T)


V1 = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param(None, id="missing"),
        pytest.param(f"t=abc,v1={V1}", id="t-not-integer"),
        pytest.param(f"t=-5,v1={V1}", id="t-negative"),
        pytest.param(f"t=1.5,v1={V1}", id="t-float"),
        pytest.param(f"t=,v1={V1}", id="t-empty"),
        pytest.param(f"v1={V1}", id="v1-only"),
        pytest.param("t=1", id="t-only"),
        pytest.param("t=1,v1=", id="v1-empty"),
        pytest.param(f"t=1,t=2,v1={V1}", id="two-t"),
        pytest.param("garbage", id="garbage"),
        pytest.param(f"t=1;v1={V1}", id="wrong-separator"),
        pytest.param(f"t=1,v0={V1}", id="only-unknown-scheme"),
        pytest.param(f"t=1,={V1}", id="empty-key"),
    ],
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    """Unparseable headers raise MalformedHeader with a readable reason."""
    with pytest.raises(MalformedHeader, match="malformed signature header"):
        verify(BODY, header, SECRET, now=T)  # type: ignore[arg-type]


def test_header_items_in_any_order_with_whitespace() -> None:
    """Order is free and whitespace around items, keys and values is tolerated."""
    v1 = signature(SECRET, T, BODY)
    assert verify(BODY, f" v1 = {v1} ,  t = {T} ", SECRET, now=T)


def test_parse_header_returns_t_and_every_v1() -> None:
    """parse_header keeps all v1 entries in order and ignores other schemes."""
    assert parse_header(f"t={T},v1=aa,v0=zz,v1=bb,") == (T, ["aa", "bb"])


def test_any_matching_v1_entry_is_enough() -> None:
    """During secret rotation a header carries several v1; one match verifies."""
    good = signature(SECRET, T, BODY)
    other = signature("whsec_old", T, BODY)
    assert verify(BODY, f"t={T},v1={other},v1={good}", SECRET, now=T)
    assert verify(BODY, f"t={T},v1={good},v1={other}", SECRET, now=T)


def test_unknown_schemes_are_ignored() -> None:
    """v0 or future schemes neither break nor satisfy verification."""
    good = signature(SECRET, T, BODY)
    assert verify(BODY, f"t={T},v0=deadbeef,v2=xyz,v1={good}", SECRET, now=T)
    with pytest.raises(BadSignature):
        verify(BODY, f"t={T},v0={good},v1=deadbeef", SECRET, now=T)


def test_non_ascii_v1_is_a_bad_signature_not_a_crash() -> None:
    """A hostile header with non-ASCII text is refused cleanly."""
    with pytest.raises(BadSignature):
        verify(BODY, f"t={T},v1=ñññ", SECRET, now=T)


def test_every_v1_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each v1 entry goes through hmac.compare_digest, even after a match."""
    calls: list[tuple[bytes | str, bytes | str]] = []
    real = hmac.compare_digest

    def spy(a: bytes | str, b: bytes | str) -> bool:
        calls.append((a, b))
        return real(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    good = signature(SECRET, T, BODY)
    verify(BODY, f"t={T},v1={good},v1=00,v1=11", SECRET, now=T)
    assert [b for _, b in calls] == [good.encode(), b"00", b"11"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_signed_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    """A correctly signed body must still be a JSON object."""
    with pytest.raises(SignatureError, match="body is not a JSON object"):
        verify(body, sign(SECRET, T, body), SECRET, now=T)


def test_signed_body_that_is_not_json_is_refused() -> None:
    """A correctly signed body that does not parse raises SignatureError."""
    body = b"{not json"
    with pytest.raises(SignatureError, match="not valid JSON"):
        verify(body, sign(SECRET, T, body), SECRET, now=T)


# The prefix keeps a short random secret from being a substring of a fixed message.
_secrets = st.text(min_size=1, max_size=64).map(lambda s: "whsec_" + s)


@given(secret=_secrets, forged=_secrets)
def test_secret_never_appears_in_an_error(secret: str, forged: str) -> None:
    """Whatever fails, the message names the problem and never the secret."""
    cases = [
        (BODY, sign(forged, T, BODY)),  # bad (unless secret == forged)
        (BODY, sign(secret, T - 10_000, BODY)),  # stale
        (BODY, f"t=x,v1={secret}"),  # malformed, secret-shaped v1
        (b"[]", sign(secret, T, b"[]")),  # not an object
        (BODY, f"t={T},v1={secret}"),  # the secret itself as v1
    ]
    for body, header in cases:
        try:
            verify(body, header, secret, now=T)
        except SignatureError as exc:
            assert secret not in str(exc)
            assert secret not in repr(exc)
