"""Logging in upgrades an old keystore, and fetches one from the ledger only when this machine has none.

A real replica (the ``deployment`` fixture). A user registered with a version-1
keystore (scrypt N=2^14, as clients made them before) logs in from another
machine: the keystore opens, is wrapped anew with Argon2id, stored on the
ledger (``ChangeKeystore``, signed by the user) and on this machine. Keystore
fetches are limited per login by the ledger; a machine that keeps its keystore
logs in all the same. The last test checks the ledger's side of that contract
(``too_many_attempts``) and fails until the ledger limits fetches.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from broker import commands as c
from broker import errors
from peer.client import Client
from peer.errors import WrongPassword
from peer.identity import Profile, _seal_keystore_v1, create_identity, keystore_version, open_keystore
from tests.conftest import Deployment
from tests.support.waiting import wait_for

PASSWORD = "password of an old user"


def _register_v1(dep: Deployment) -> str:
    """A user whose keystore on the ledger is of version 1; returns the login."""
    login = f"old{uuid.uuid4().hex[:8]}"
    me = create_identity(login)
    keystore = _seal_keystore_v1(me, PASSWORD)
    dep.client().send(c.RegisterUser(login=login, sign_key=me.sign_public.hex(), box_key=me.box_public.hex(),
                                     cert_pem=me.cert_pem.decode(), keystore=keystore), sender=login, key=me.sign_key)
    return login


def _ledger_keystore(dep: Deployment, login: str, at_least: int) -> str:
    wait_for(lambda: dep.head_seq() >= at_least, 20, f"the replica to apply up to seq {at_least}")
    return dep.state.users[login].keystore


def _elsewhere(dep: Deployment, home: Path) -> Client:
    client = Client(dep.broker(), home)
    return client


def test_an_old_keystore_is_rewrapped_at_login_on_the_ledger_and_here(deployment: Deployment,
                                                                     tmp_path: Path) -> None:
    login = _register_v1(deployment)
    assert keystore_version(deployment.state.users[login].keystore) == 1
    before = deployment.head_seq()

    laptop = _elsewhere(deployment, tmp_path / "laptop")
    with pytest.raises(WrongPassword):
        laptop.login(login, "not the password")
    assert deployment.head_seq() == before and Profile(tmp_path / "laptop", login).keystore() is None

    result = laptop.login(login, PASSWORD)
    assert result["login"] == login
    local = Profile(tmp_path / "laptop", login).keystore()
    assert local is not None and keystore_version(local) == 2
    on_ledger = _ledger_keystore(deployment, login, before + 1)
    assert on_ledger == local
    assert open_keystore(on_ledger, PASSWORD).sign_public == laptop.identity.sign_public  # type: ignore[union-attr]

    # Already current: the next login writes nothing.
    head = deployment.head_seq()
    _elsewhere(deployment, tmp_path / "laptop").login(login, PASSWORD)
    assert deployment.head_seq() == head


def test_a_new_user_logs_in_elsewhere_without_an_upgrade(deployment: Deployment, tmp_path: Path) -> None:
    login = f"new{uuid.uuid4().hex[:8]}"
    Client(deployment.broker(), tmp_path / "desk").register(login, "password of a new user")
    head = deployment.head_seq()
    phone = _elsewhere(deployment, tmp_path / "phone")
    phone.login(login, "password of a new user")
    assert keystore_version(Profile(tmp_path / "phone", login).keystore() or "") == 2
    assert deployment.head_seq() == head


def test_keystore_fetches_are_limited_per_login_but_a_machine_with_its_keystore_logs_in(
        deployment: Deployment, tmp_path: Path) -> None:
    login = f"lim{uuid.uuid4().hex[:8]}"
    Client(deployment.broker(), tmp_path / "desk").register(login, "password of a limited user")
    refusal: errors.CommandRejected | None = None
    for attempt in range(40):  # an attacker guessing from fresh machines, each fetching the keystore
        try:
            _elsewhere(deployment, tmp_path / f"fresh{attempt}").login(login, "a guess of the password")
        except WrongPassword:
            continue
        except errors.CommandRejected as exc:
            refusal = exc
            break
    assert refusal is not None, "40 keystore fetches for one login in a row were all answered"
    assert refusal.code == "too_many_attempts"
    assert refusal.message.startswith(f"too many keystore requests for {login}; try again in ")
    assert refusal.message.endswith(" s")

    # The user's own machine has the keystore, asks only for a challenge, and gets in.
    desk = _elsewhere(deployment, tmp_path / "desk")
    assert desk.login(login, "password of a limited user")["login"] == login
