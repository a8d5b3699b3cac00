"""One error type for mistakes a user can fix: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input (missing file, unknown config key, unsupported model, prompt too long...).

    The message must name the offending key, file or value; it is shown without a traceback.
    """


def require(value, message: str) -> None:
    """A required config value: raise UserError(message) when it is empty ('', [], 0 or None)."""
    if not value:
        raise UserError(message)
