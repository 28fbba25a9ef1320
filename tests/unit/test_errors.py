"""One error tree: every error of ours descends from AcbError, and broker/errors.py draws all of it."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import broker.errors
from broker.errors import CODES, AcbError, CommandRejected, InsufficientFunds, RemoteError

PACKAGES = ("broker", "ledger", "catalog", "peer", "console")


def _our_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            if ".gui" in info.name:  # views raise nothing of their own; importing them needs Qt
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
                        and not issubclass(obj, Warning)):
                    found[f"{info.name}.{obj.__qualname__}"] = obj
    return found


def test_every_error_of_ours_descends_from_the_root() -> None:
    strays = [name for name, cls in _our_exceptions().items() if not issubclass(cls, AcbError)]
    assert not strays, f"not under AcbError: {strays}"


def test_the_tree_in_one_docstring_names_every_error() -> None:
    doc = broker.errors.__doc__ or ""
    registered = set(CODES.values()) | {RemoteError}
    missing = [name for name, cls in _our_exceptions().items()
               if cls not in registered and cls.__name__ not in doc]
    assert not missing, f"not drawn in broker/errors.py: {missing}"


def test_a_refusal_reads_as_one_and_exits_2() -> None:
    refusal = InsufficientFunds("balance 40, price 100")
    assert (refusal.for_person(), refusal.exit_code) == ("refused: insufficient_funds: balance 40, price 100", 2)
    assert isinstance(refusal, CommandRejected)


def test_any_other_error_reads_as_its_message_and_exits_1() -> None:
    from ledger.errors import StoreError
    from peer.cli_support import CliError
    from peer.transfer.errors import ConnectionLost

    for error in (StoreError("the store is gone"), CliError("the store is gone"), ConnectionLost("the store is gone")):
        assert (error.for_person(), error.exit_code) == ("the store is gone", 1)
