"""ACB's errors: one root, a subtree per package, and the registry of codes that cross the wire.

Every error ACB raises on purpose is an :class:`AcbError` whose message a person can act on; the
``acb`` command prints it on one line (``acb: ...``, exit :attr:`AcbError.exit_code`) and the GUIs
show it as it is. Errors of pika, SQLAlchemy, pydantic and ``ssl`` are turned into these where
they arise (``raise OurError(...) from exc``)::

    AcbError                              broker/errors.py: anything ACB raises on purpose
    ├── BrokerError                       broker/: the wire
    │   ├── BrokerUnavailable             RabbitMQ cannot be reached or dropped us
    │   │   └── BrokerRefused             it refused us for good: credentials, permissions, certificate
    │   ├── ReplyTimeout                  no answer in time (the command may still apply)
    │   ├── ConfigurationError            a key, URL, certificate or variable this process needs is missing or bad
    │   ├── MalformedMessage              bytes that do not parse into one of our models
    │   ├── SealError                     broker/sealing.py: a sealed key does not open with this key and purpose
    │   ├── AdminError                    broker/admin.py: the management API refused or failed
    │   ├── ContentError                  content crypto: a document, segment or manifest does not check out
    │   │   ├── DecryptionFailed          a segment does not decrypt (wrong key, tampered bytes)
    │   │   ├── ProofInvalid              a Merkle proof or a manifest field does not check out
    │   │   └── SignatureInvalid          a manifest is not signed by the expected provider
    │   └── CommandRejected               a coded refusal a person can act on (exit code 2)
    │       ├── BadSignature, StaleCommand, UnknownUser, DuplicateRegistration,
    │       ├── NotAuthorized, BadAmount, BadPrice, UnknownDocument, OwnDocument,
    │       ├── PriceChanged, InsufficientFunds, UnknownSale, NotYourSale,
    │       ├── SaleClosed, KeyNotEscrowed, BadEscrow, ...  (the registry below)
    │       └── RemoteError               a code this side does not know
    ├── LedgerError                       ledger/errors.py: the ledger's own
    │   ├── StoreError                    the database refused or failed (SQLAlchemy errors are wrapped)
    │   ├── ChainBroken                   a stored or received event does not fit the hash chain or sequence
    │   ├── ConfigError                   keys or settings missing or unreadable
    │   ├── Deposed                       ledger/primary.py: another replica holds a higher epoch: stop writing
    │   └── LaunchError                   ledger/launch.py: a replica process died or did not get ready in time
    ├── CatalogError                      catalog/errors.py: search and its projection
    │   ├── BadQuery                      a search we do not answer as asked (the message says why)
    │   │   └── BadCursor                 a page cursor this catalog did not issue, or issued for another search
    │   ├── BadDocument                   a document the projection refuses (oversized metadata, bad topic)
    │   └── CatalogStoreError             the catalog's database refused or failed
    ├── PeerError                         peer/errors.py: the client side
    │   ├── WrongPassword                 the password does not open the keystore
    │   ├── NotLoggedIn                   no session: run `acb login`
    │   ├── VerificationFailed            downloaded content does not match what was published
    │   ├── ControlError                  peer/transfers.py: `acb serve`'s control channel refused or is unusable
    │   │   ├── NoServe                   no `acb serve` of this user answers
    │   │   └── ServeRunning              another one already holds the control socket
    │   ├── CliError                      peer/cli_support.py: a one-line error of the command line
    │   └── TransferError                 peer/transfer/errors.py: the peer-to-peer transfer
    │       ├── TransferRefused           the provider (or our own checks) refused the session
    │       │   └── AuthenticationFailed  the other side's TLS certificate or key is not the expected one
    │       ├── ProtocolError             the other side broke the wire protocol
    │       ├── ConnectionLost            the connection dropped or timed out mid-transfer
    │       ├── TransferCancelled         cancelled through a TransferControl
    │       ├── IntegrityError            a received segment or manifest failed verification
    │       │   ├── ManifestInvalid       header/entry not signed by the provider, or for another sale/document
    │       │   ├── SegmentCorrupt        ciphertext does not match the signed hash
    │       │   ├── SegmentTruncated      segment shorter than the document layout says
    │       │   └── SegmentOutOfOrder     segment index is not the one expected next
    │       ├── JournalError              the local download journal is unusable
    │       ├── WrongKey                  the released key is not the one the provider committed to
    │       └── ContentMismatch           decrypted content fails the published commitment (carries evidence)
    └── ConsoleError                      console/errors.py: the operator's tools
        └── NetnsError                    console/netns.py: a network namespace could not be made or used

Refusals of commands are not ledger errors: they are coded :class:`CommandRejected` that travel back
to the client. A reply carries ``{"code": ..., "message": ...}``; :func:`rejection` turns it back
into the registered class so callers can catch what they expect.
"""
from __future__ import annotations

__all__ = [
    "AcbError", "BrokerError", "BrokerUnavailable", "BrokerRefused", "ReplyTimeout", "ConfigurationError",
    "MalformedMessage", "CommandRejected",
    "ContentError", "DecryptionFailed", "ProofInvalid", "SignatureInvalid",
    "RemoteError", "rejection", "CODES",
]


class AcbError(Exception):
    """Root of every error ACB raises on purpose; ``str()`` is a message for a person."""

    exit_code = 1  # what `acb` exits with when this error ends a command

    def for_person(self) -> str:
        """The one line `acb` prints after ``acb: ``."""
        return str(self)


class BrokerError(AcbError):
    """Root of everything the broker package raises."""


class BrokerUnavailable(BrokerError):
    """RabbitMQ could not be reached, or the connection broke."""


class BrokerRefused(BrokerUnavailable):
    """The broker said no for good (credentials, permissions, an untrusted certificate): retrying will not help."""


class ReplyTimeout(BrokerError):
    """No reply arrived in time."""


class ConfigurationError(BrokerError):
    """Something a process needs is not configured (a key, a URL, a certificate)."""


class MalformedMessage(BrokerError):
    """Bytes that do not parse into a known, current model."""

    code = "malformed"


class ContentError(BrokerError):
    """Root of the content-crypto errors (the tree is in this module's docstring)."""


class DecryptionFailed(ContentError):
    """A ciphertext segment failed AES-GCM authentication."""


class ProofInvalid(ContentError):
    """A Merkle proof or manifest field does not match what was published."""


class SignatureInvalid(ContentError):
    """A manifest header or entry is not validly signed by the provider."""


class CommandRejected(BrokerError):
    """A refusal with a code from the registry and a message for a person."""

    code = "rejected"
    exit_code = 2  # a refusal by the ledger, not a failure: scripts tell the two apart

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def for_person(self) -> str:
        return f"refused: {self}"


CODES: dict[str, type[CommandRejected]] = {}


def _code(name: str, doc: str) -> type[CommandRejected]:
    cls = type(
        "".join(p.capitalize() for p in name.split("_")),
        (CommandRejected,),
        {"code": name, "__doc__": doc},
    )
    CODES[name] = cls
    globals()[cls.__name__] = cls
    __all__.append(cls.__name__)
    return cls


Malformed = _code("malformed", "The message does not parse into one of our models.")
UnknownType = _code("unknown_type", "The message names a type this side does not know.")
UnsupportedVersion = _code("unsupported_version", "The message's schema_version is not supported.")
BadSignature = _code("bad_signature", "The signature does not verify with the sender's registered key.")
StaleCommand = _code("stale_command", "The command was issued too long ago or in the future.")
UnknownUser = _code("unknown_user", "No such registered user.")
DuplicateRegistration = _code("duplicate_registration", "That login is taken.")
BadLogin = _code("bad_login", "The login name is not allowed.")
NotAuthorized = _code("not_authorized", "The sender may not do this.")
BadAmount = _code("bad_amount", "The amount must be a positive whole number of minor units.")
BadPrice = _code("bad_price", "The price must be a positive whole number of minor units.")
UnknownDocument = _code("unknown_document", "No such published document.")
DuplicateDocument = _code("duplicate_document", "That document id is already published.")
OwnDocument = _code("own_document", "A provider cannot buy their own document.")
PriceChanged = _code("price_changed", "The document's price is not the one the buyer agreed to.")
InsufficientFunds = _code("insufficient_funds", "The available balance does not cover the price.")
UnknownSale = _code("unknown_sale", "No such sale.")
DuplicateSale = _code("duplicate_sale", "That sale id is already used.")
NotYourSale = _code("not_your_sale", "The sale belongs to other parties.")
SaleClosed = _code("sale_closed", "The sale is already settled, voided or refunded.")
KeyNotEscrowed = _code("key_not_escrowed", "The provider has not escrowed the key yet.")
BadEscrow = _code("bad_escrow", "The escrowed key does not open or does not match its commitment.")
BadChallenge = _code("bad_challenge", "The login challenge is invalid, expired or wrongly signed.")
Lagging = _code("lagging", "The replica has not yet applied the requested sequence.")
UnknownQuery = _code("unknown_query", "No such read query.")
TooManyAttempts = _code("too_many_attempts", "Too many requests of this kind for this account; wait and retry.")
IdInUse = _code("id_in_use", "The command id was already used by another command; send it under a new id.")
Busy = _code("busy", "The ledger is busy with other requests; retry a little later.")
Expired = _code("expired", "The request waited past the deadline its sender set; it was not carried out.")
NotCertified = _code("not_certified", "The replica's key is not in the operator's current roster.")


class RemoteError(CommandRejected):
    """A code this side does not know: shown as it came."""


def rejection(error: dict[str, str]) -> CommandRejected:
    """Turn a reply's error object back into the registered exception."""
    code = str(error.get("code", "remote_error"))
    message = str(error.get("message", "unknown error"))
    cls = CODES.get(code)
    if cls is None:
        return RemoteError(message, code=code)
    return cls(message)
