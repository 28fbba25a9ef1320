"""Keystores: Argon2id-wrapped (version 2), bounded, and today's scrypt ones (version 1) still open.

No broker here: sealing and opening are pure functions of the keys, the password
and the blob. The re-wrap at login is tested against a real ledger in
tests/integration/test_login_rewrap.py.
"""
from __future__ import annotations

import json
import time

import pytest

from broker.codec import b64d, b64e, canonical
from broker.commands import KEYSTORE_MAX
from peer.errors import PeerError, WrongPassword
from peer.identity import (
    ARGON2ID,
    KEYSTORE_VERSION,
    Profile,
    _seal_keystore_v1,
    create_identity,
    keystore_version,
    needs_rewrap,
    open_keystore,
    seal_keystore,
)

# Made by the client before version 2 (peer/identity.py at fea5984: scrypt N=2^14), for the login
# "bob" with the password "password of bob". The keys in it are a test's own, used nowhere else.
V1_KEYSTORE = (
    "eyJjdCI6ICJYOWRaY1FJb284dnhsS1EvVXBiTVRjQnRNeWtQMVdxMThEKzVxVVE3WXIzNEFBcGRsRzlzNkszSVZOR2preHF4a2VBcTNoandnWl"
    "BXSGpicXlRTGNZdzE1aXpOWGFXcjBrL1R4MXZ3SEpPbkc4bEdWQmJ5TmhETkZ2UE4xRTRNNjRsZEJleGxBOUptdnpvRkRzSVl2Y3UxcThJems5"
    "UFgvUVZqckpMclFPOHR0QzUxd2h3aktIVTRNaisrUXJ0c1liL3N4VG43NXRKeG0yWmFxbGFQZVpTYVpFRzB5YlRoU0xiNGw4U3pMS1Jrc2xVRn"
    "A1Ym9Jelp1Sm1aVUlqNVlOcnYxdk1pMnFKajVvS2haMGRlSEYwVWNLNmUzaWdHMVByM2pOWlhpaGxHdDVXMVVGaG9yRU0zSkY4VURSeWMzMDJC"
    "ZkZqUm9zVE5VV3AxbUU5cy9CcmhjdEFoY2RIdnE0ZnNXV2ZRYWJlNFFGR0hOK3N2RTJNSFplUnRiSENyeW9tTm54cnNWY21SaU12aUtScmUxa0"
    "50S0dvM3lwbzlHdEtkMnJJMUJFQ0VlekVTTEQvd0FUU3JHeU5LcG5FcUttVk5GYy9WMk5qby95Z3BJU0hybU1idnZOT1pESERUTzZLNlF0RFZE"
    "cG5pSUJwYlBUdlhsUTQ0NDNPbWZMQW1hdkpoNWZBZXhUVEdYRVFLek5ubWF1RWNzSlVDU1RJZmRkeFYxbEo3ak5lTmlYUUtMUlBzTENXWjVKQ3"
    "ZOYnltYU1SZUdvOGNDMWNiMFR4VXRkUGJQNDdqQ1doeWhKQ1NHZ1hxbGlBODRVd1NHajd0Q2RpUEpmZVpQSk52WnY0eTkxSm1sQlNST2JjaEJJ"
    "eTJ0Qk1nQlUwVXJrYXc2NkkxV1BScXJLM0R4YjFBNHFyQlQ2UnVxU0NubVFmbEFtUnZicm5Lc0tFeXc3bGQxL2lPQThDeDgrejhiV3hpWFBna0"
    "1wVnhUU0w2dE1qQzFqRFhGVDVlNkZoTDZvc3hkeHhPcThlNDZzSi9EckRZSHJIYTc5dmdsUzlFTlVvN0I1NmRwSWhibEVRRklEVFpQOU1aZ0E0"
    "NmNiM2c2LzFHS0duTkFFQ3BWblZESFBmMktuby9XNkllbHo5KzZQNFJhSjF2c2hjczBrNDBBZTg1RjRIQlR1Y2lYZzdSRU9BTklRTGo4cE0vYz"
    "h5dXlMQ1lDOTJUNG9jbU12blBMcUVtM0JPMkR2N3IwaHliY29vNHZ4S2ZiZDI3cjh0ZDBadHFQTUtSMTRyaXRWWHZNc085dHlPSXZhUlRhOXVX"
    "eXIrdThETEx2NFlFN1h3Qm1xQVlPMGJkWVc5QVlTaUw5K3BiL0h4aUlZdExGcm4yM0hPTEwyK2VBMGw4dlhraVVkeHZiNGJ2SjdUMFVOVitFPS"
    "IsICJrZGYiOiAic2NyeXB0IiwgImxvZ2luIjogImJvYiIsICJuIjogMTYzODQsICJub25jZSI6ICI4NjBkNzczMzdiMTdiMzQ5ZWVhYjY4Mjci"
    "LCAicCI6IDEsICJyIjogOCwgInNhbHQiOiAiNzc5YTU3M2NjYThjOTIzMmYwYjQ5YjE2ZWQzYWY2OWYiLCAidiI6IDF9"
)
V1_SIGN_PUBLIC = "d43355e09e53c2df24aed04c3803ec8cc35573ffc1e95ecb2dae98e27bddd6f0"

FAST = {"m": 8 * 1024, "t": 1, "p": 1}  # for tests that are not about the KDF's cost


def _blob(keystore: str) -> dict[str, object]:
    return json.loads(b64d(keystore))


def _reencode(blob: dict[str, object]) -> str:
    return b64e(canonical(blob))


def test_a_version_1_keystore_still_opens_and_asks_to_be_rewrapped() -> None:
    assert keystore_version(V1_KEYSTORE) == 1
    me = open_keystore(V1_KEYSTORE, "password of bob")
    assert (me.login, me.sign_public.hex()) == ("bob", V1_SIGN_PUBLIC)
    assert needs_rewrap(V1_KEYSTORE)
    with pytest.raises(WrongPassword, match="wrong password for bob"):
        open_keystore(V1_KEYSTORE, "password of eve")


def test_a_new_keystore_is_argon2id_at_or_above_owasp_minimum() -> None:
    me = create_identity("bob")
    started = time.perf_counter()
    keystore = seal_keystore(me, "password of bob")
    blob = _blob(keystore)
    assert (blob["v"], blob["kdf"]) == (KEYSTORE_VERSION, "argon2id") == (2, "argon2id")
    assert {k: blob[k] for k in ("m", "t", "p")} == ARGON2ID
    # OWASP's Password Storage Cheat Sheet: at least m=19 MiB with t=2 (or 46 MiB with t=1), p=1.
    assert ARGON2ID["m"] >= 19 * 1024 and ARGON2ID["m"] * ARGON2ID["t"] >= 2 * 19 * 1024
    opened = open_keystore(keystore, "password of bob")
    elapsed = time.perf_counter() - started
    assert opened.sign_public == me.sign_public and opened.box_public == me.box_public
    assert opened.cert_pem == me.cert_pem
    assert not needs_rewrap(keystore)
    assert elapsed > 0.02, "sealing and opening at 64 MiB cannot be this fast: is the KDF applied?"


def test_a_wrong_password_does_not_open_a_new_keystore() -> None:
    keystore = seal_keystore(create_identity("bob"), "password of bob", params=FAST)
    with pytest.raises(WrongPassword, match="^wrong password for bob$"):
        open_keystore(keystore, "password of eve")


def test_weaker_settings_are_rewrapped_too() -> None:
    assert needs_rewrap(seal_keystore(create_identity("bob"), "password of bob", params=FAST))


@pytest.mark.parametrize("change", [{"login": "eve"}, {"m": 16 * 1024}, {"t": 2}, {"p": 2}])
def test_the_header_is_bound_to_the_ciphertext(change: dict[str, object]) -> None:
    keystore = seal_keystore(create_identity("bob"), "password of bob", params=FAST)
    with pytest.raises(WrongPassword):
        open_keystore(_reencode({**_blob(keystore), **change}), "password of bob")


def test_a_real_keystore_is_a_fraction_of_the_bound() -> None:
    keystore = seal_keystore(create_identity("a" + "b" * 31), "a long password " * 8, params=FAST)
    assert len(keystore) * 3 < KEYSTORE_MAX


def test_an_oversized_keystore_is_refused_before_any_work() -> None:
    huge = b64e(canonical({"v": 2, "kdf": "argon2id", "login": "bob", "pad": "x" * KEYSTORE_MAX}))
    started = time.perf_counter()
    with pytest.raises(PeerError, match=f"at most {KEYSTORE_MAX} are allowed"):
        open_keystore(huge, "password of bob")
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(("change", "words"), [
    ({"m": 1 << 30}, "its m setting 1073741824 is outside"),
    ({"t": 10_000}, "its t setting 10000 is outside"),
    ({"p": 0}, "its p setting 0 is outside"),
    ({"m": "64"}, "its m setting '64' is outside"),
])
def test_hostile_kdf_settings_are_refused_without_running_them(change: dict[str, object], words: str) -> None:
    keystore = seal_keystore(create_identity("bob"), "password of bob", params=FAST)
    with pytest.raises(PeerError, match=words):
        open_keystore(_reencode({**_blob(keystore), **change}), "password of bob")


def test_hostile_scrypt_settings_are_refused() -> None:
    blob = _blob(V1_KEYSTORE)
    with pytest.raises(PeerError, match="its n setting 1073741824 is outside"):
        open_keystore(_reencode({**blob, "n": 2**30}), "password of bob")


@pytest.mark.parametrize(("keystore", "words"), [
    ("not base64!", "not an encoded keystore"),
    (b64e(b"[1, 2]"), "not an encoded keystore"),
    (b64e(canonical({"v": 9, "kdf": "rot13", "login": "bob", "salt": "00" * 16, "nonce": "00" * 12, "ct": ""})),
     "keystore version 9"),
    (b64e(canonical({"v": 2, "kdf": "argon2id", "login": "bob", **FAST})), "keystore is damaged"),
])
def test_a_damaged_keystore_says_so(keystore: str, words: str) -> None:
    with pytest.raises(PeerError, match=words):
        open_keystore(keystore, "password of bob")


def test_version_1_as_old_clients_made_it_opens() -> None:
    me = create_identity("carol")
    keystore = _seal_keystore_v1(me, "password of carol")
    assert keystore_version(keystore) == 1 and needs_rewrap(keystore)
    assert open_keystore(keystore, "password of carol").sign_public == me.sign_public


def test_a_short_password_is_refused() -> None:
    with pytest.raises(PeerError, match="at least 8 characters"):
        seal_keystore(create_identity("bob"), "short")


def test_the_profile_replaces_its_keystore_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    profile = Profile(tmp_path, "bob")
    profile.save_keystore(V1_KEYSTORE)
    profile.save_keystore("new")
    assert profile.keystore() == "new"
    assert sorted(p.name for p in profile.dir.iterdir()) == ["keystore"]
