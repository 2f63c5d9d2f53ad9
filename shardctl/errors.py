"""The errors shardctl shows to users.

Every expected failure is a ``ShardctlError``: the CLI prints its one-line
message (never a traceback) and exits with its ``exit_code``.

    ShardctlError                 exit 1 unless noted
    ├── ConfigError               exit 2: bad config file, key or value
    ├── UsageError                exit 2: bad command-line arguments
    ├── DatabaseError             the database refused or failed a statement
    │   └── DatabaseUnavailable   the database cannot be reached (retryable)
    ├── ShardFenced               exit 3: another host holds the shard's lease (cluster mode)
    ├── EmbeddedServerError       the embedded PostgreSQL could not start/stop
    ├── ReferenceUnavailable      Twelve Data's reference lists cannot be fetched (no key, no network)
    └── ControlError              a control request was refused (has a ControlCode)
        └── SupervisorNotRunning  no supervisor answers on the control socket
"""

from __future__ import annotations

import enum
from datetime import datetime

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
#: A worker stopped because another host holds its shard's lease (cluster mode): it committed nothing
#: after it learnt so and closed its websocket. Not a failure: its supervisor stands by for the shard.
EXIT_FENCED = 3


class ShardctlError(Exception):
    """Base of every error shown to a user as one line."""

    exit_code: int = EXIT_RUNTIME

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ShardctlError):
    """A problem in a config file, naming the file, the key and the fix."""

    exit_code = EXIT_CONFIG

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


class ConfigErrors(ConfigError):
    """Several config problems found in one pass; ``problems`` lists each."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        first = problems[0]
        ShardctlError.__init__(
            self,
            first.message if len(problems) == 1 else f"{first.message} (and {len(problems) - 1} more problems)",
        )
        self.file, self.key = first.file, first.key


class UsageError(ShardctlError):
    exit_code = EXIT_CONFIG


class DatabaseError(ShardctlError):
    """The database answered with an error (rights, schema, constraint...)."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached now; retrying later may succeed."""


class ShardFenced(ShardctlError):
    """This worker's lease epoch is no longer the shard's: another host owns it. Commit nothing more."""

    exit_code = EXIT_FENCED


class LedgerRolledBack(ShardctlError):
    """The shard's ledger is behind what this worker saw committed: the database went back in time."""

    def __init__(self, shard: str, ledger_offset: int, known_offset: int,
                 ledger_received_at: datetime | None = None) -> None:
        self.ledger_offset, self.known_offset = ledger_offset, known_offset
        #: The receive time of the last frame the older ledger holds (None: not known).
        self.ledger_received_at = ledger_received_at
        super().__init__(f"shard {shard}: the database went back in time: its ledger is at journal offset "
                         f"{ledger_offset}, but offset {known_offset} was committed (a failover to an asynchronous "
                         f"standby, or a restore)")


class EmbeddedServerError(ShardctlError):
    """The embedded PostgreSQL server could not be started, found or stopped."""


class ReferenceUnavailable(ShardctlError):
    """Twelve Data's reference lists (``/stocks``...) could not be fetched: no key, no network, refused."""


class ControlCode(enum.StrEnum):
    """Why a control request was refused; the ``code`` of the control protocol's refusals."""

    NO_SUCH_SHARD = "no_such_shard"
    BUSY = "busy"
    ALREADY_RUNNING = "already_running"
    NOT_RUNNING = "not_running"
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"

    @classmethod
    def read(cls, text: object) -> ControlCode:
        """The code named by ``text``; an unknown one (a newer supervisor's) reads as INTERNAL."""
        try:
            return cls(str(text))
        except ValueError:
            return cls.INTERNAL


class ControlError(ShardctlError):
    """A control request was refused; ``code`` says why, for machines."""

    def __init__(self, code: ControlCode, message: str) -> None:
        self.code = code
        super().__init__(message)


class SupervisorNotRunning(ControlError):
    def __init__(self, message: str) -> None:
        super().__init__(ControlCode.NOT_RUNNING, message)
