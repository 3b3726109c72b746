"""The one exception of the converter: :class:`ConversionError`, with a bounded ``code``."""

from __future__ import annotations

__all__ = ["ConversionError"]


class ConversionError(ValueError):
    """The message cannot be converted.

    ``code`` is a bounded snake_case word: ``unreadable`` (not an ER7 message),
    ``unsupported_message_type`` (no builder is registered for MSH-9),
    ``no_patient`` (no PID-3 to identify the patient by),
    ``no_message_time`` (no usable MSH-7 for the Provenance). The message is a
    fixed sentence: it never contains a value from the payload.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
