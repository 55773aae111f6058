"""The one error type of `tlbench report`: a user mistake the CLI turns into one line and exit code 2."""

from ..errors import TlbenchError


class ReportError(TlbenchError):
    """Missing experiment or store, unknown rule or key, or a table cell that would mix configurations."""
