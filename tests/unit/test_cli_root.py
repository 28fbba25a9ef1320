"""The `acb` root: subcommands come by registration, and errors end a command in one place, by class."""
from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from broker.cli import GROUP, Commands, Registration, build_parser, main
from broker.errors import AcbError, InsufficientFunds
from broker.settings import Environment, Settings
from ledger.errors import StoreError
from peer.transfer.errors import ConnectionLost

# `acb --help` lists the commands in this order, as it did before each package registered its own.
HELP_ORDER = ["register", "login", "logout", "whoami", "share", "unshare", "price", "search", "buy", "balance",
              "flows", "sales", "cancel", "serve", "transfers", "init", "operator", "admin", "ledger", "audit",
              "status", "drill", "gui", "console", "demo", "bench"]


@pytest.fixture(autouse=True)
def empty_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in Environment.model_fields:
        monkeypatch.delenv(Environment.variable(name), raising=False)
    monkeypatch.setenv("ACB_HOME", str(tmp_path))
    return tmp_path


def _raising(error: BaseException) -> list[Registration]:
    def register(commands: Commands) -> None:
        def fail(args: argparse.Namespace, settings: Settings) -> int:
            raise error

        commands.add("fail", fail, "raise", rank=1)

    return [register]


def test_every_package_registers_through_the_entry_point_group() -> None:
    assert {ep.name for ep in entry_points(group=GROUP)} == {"broker", "ledger", "peer", "console", "bench"}


def test_help_lists_every_command_in_rank_order() -> None:
    _, commands = build_parser()
    assert [action.dest for action in commands.sub._choices_actions] == HELP_ORDER


def test_rank_orders_help_whatever_order_the_registrations_ran_in() -> None:
    def late(commands: Commands) -> None:
        commands.add("second", lambda a, s: 0, "b", rank=2)

    def early(commands: Commands) -> None:
        commands.add("first", lambda a, s: 0, "a", rank=1)

    _, commands = build_parser([late, early])
    assert [action.dest for action in commands.sub._choices_actions] == ["first", "second"]


def test_a_refusal_prints_refused_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fail"], _raising(InsufficientFunds("balance 40, price 100"))) == 2
    assert capsys.readouterr().err == "acb: refused: insufficient_funds: balance 40, price 100\n"


@pytest.mark.parametrize("error", [StoreError("the store is gone"), ConnectionLost("the store is gone"),
                                   AcbError("the store is gone")])
def test_any_other_error_of_ours_prints_its_message_and_exits_1(capsys: pytest.CaptureFixture[str],
                                                                  error: AcbError) -> None:
    assert main(["fail"], _raising(error)) == 1
    assert capsys.readouterr().err == "acb: the store is gone\n"


def test_an_error_not_of_ours_is_not_hidden() -> None:
    with pytest.raises(ZeroDivisionError):
        main(["fail"], _raising(ZeroDivisionError("a bug")))


def test_a_bad_variable_ends_the_command_with_its_name(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ACB_REPLY_TIMEOUT", "soon")
    assert main(["whoami"]) == 1
    assert capsys.readouterr().err == "acb: ACB_REPLY_TIMEOUT must be a number of seconds\n"


def test_a_missing_broker_url_says_how_to_get_one(capsys: pytest.CaptureFixture[str], empty_home: Path) -> None:
    assert main(["search", "anything"]) == 1
    assert capsys.readouterr().err.startswith(f"acb: no broker URL: set ACB_BROKER_URL or put the peer URL in "
                                              f"{empty_home / 'broker.url'}")


def test_a_store_url_that_is_not_one_is_said_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "run", "--replica-id", "r1", "--store", "no-such-thing"]) == 1
    assert capsys.readouterr().err.startswith("acb: not a store URL: ")


def test_no_registration_means_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["whoami"], []) == 1
    assert "no commands registered" in capsys.readouterr().err


def test_a_store_that_does_not_parse_is_said_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "hash", "--store", "no-such-thing"]) == 1
    assert capsys.readouterr().err.startswith("acb: cannot open store (a store URL that does not parse)")


def test_a_broker_url_that_is_not_one_is_said_plainly(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from broker.trust import raw_public

    monkeypatch.setenv("ACB_OPERATOR_KEY", raw_public(Ed25519PrivateKey.generate()).hex())
    monkeypatch.setenv("ACB_BROKER_URL", "amqp://alice@127.0.0.1:5672/%2Fno")  # a user, no password
    assert main(["search", "anything"]) == 1
    assert capsys.readouterr().err == ("acb: not a broker URL (amqp://USER:PASSWORD@HOST:PORT/VHOST): "
                                       "amqp://***@127.0.0.1:5672/%2Fno\n")
