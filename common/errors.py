"""One root error, and subclasses that each mean a decision."""


class StreamerError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(StreamerError):
    """Bad settings or bad input given by the user: report and exit non-zero, never retry."""


class RetryableError(StreamerError):
    """A transient failure (network, Redis restarting): back off and try again."""


class FatalError(StreamerError):
    """Something that retrying cannot fix: stop the process loudly."""


class BadMessageError(StreamerError):
    """A malformed frame from the exchange: count it, log it (rate-limited), carry on."""


class LeaseLostError(StreamerError):
    """This process no longer owns the shard it was writing: stop writing it at once."""
