"""innergrad's own exception classes.

Library code raises these (or plain ValueError / TypeError); it never prints or exits. Only the
command-line tool (`innergrad.cli`) turns them into a one-line message and exit status 2.
"""


class InnergradError(ValueError):
    """A bad input to innergrad (a path, a data file, an option, a config key, a tensor's shape).

    The message says what was expected, what came, and how to fix it. A ValueError, so callers that
    catch ValueError keep working.
    """


class ShapeError(InnergradError):
    """A tensor's size does not fit the model (checked in Python before any kernel runs)."""


class CheckFailed(Exception):
    """A verification found a difference past its stated tolerance (an exported file against its model,
    gradient checks, backends against each other). Not a bad input: the command line exits with status 1."""


class ExportError(InnergradError):
    """A model (or part of one) that cannot be exported; the message says what and what to do."""


class ModelSpecError(InnergradError):
    """A model that cannot describe or rebuild itself from its spec (not in the model table, or a spec that does
    not fit its class); the message says how to register it or what differs."""


class SingularMatrixError(InnergradError):
    """A per-sample linear solve met a singular matrix (e.g. a Lagrangian's d2L/dq'2)."""
