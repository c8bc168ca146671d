"""One exception family, so callers can catch project errors without swallowing bugs."""


class ToolaceError(Exception):
    """Base class of every error toolace-r raises on purpose."""


class ConfigError(ToolaceError):
    """A job config is wrong: unknown key, wrong type, missing value. The message names the key and the file."""


class DataError(ToolaceError):
    """A pool/eval record is malformed. The message names the file, the record index and the field."""

    def __init__(self, message: str, *, path: str | None = None, index: int | None = None, field: str | None = None):
        where = ", ".join(
            part for part in (
                f"file {path}" if path else "",
                f"record {index}" if index is not None else "",
                f"field {field!r}" if field else "",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.index, self.field = path, index, field


class CallParseError(ToolaceError):
    """Model text could not be read as tool calls. The message says why."""
