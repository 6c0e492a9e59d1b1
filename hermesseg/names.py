"""The one rule for names that can reach a path, a log, a shell or the Slicer GUI, and a looser one for free text.

Names (task, group, modality, dataset, label, case and model names) become file names (``<task>.nii.gz``), cache
folders (``<dataset>/<case>-<key>``), DICOM SEG segment labels and command-line arguments. They must be:

- ASCII letters, digits, ``_``, ``-`` and ``.``; starting with a letter or a digit (so never ``.``, ``..``, a hidden
  file, an option such as ``-rf``, or empty), not ending in ``.`` (Windows drops a trailing dot);
- at most 64 characters (a DICOM SEG Segment Label is a Long String, VR LO: 64 characters);
- not a Windows device name (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-``COM9``, ``LPT1``-``LPT9``, also with an
  extension: ``nul.nii.gz`` is the device on Windows).

ASCII only refuses Unicode look-alikes (Cyrillic ``а`` for Latin ``a``, full-width letters) that would make two
different tasks look the same; ``/``, ``\\``, NUL, newlines, spaces and shell metacharacters (``; $ ` ( ) |``) are
outside the alphabet. ``+`` is refused too: no shipped name needs it, and fewer characters mean fewer surprises.

Free text (descriptions, model card text, terminology meanings, lineage notes) may be any Unicode, but no control
or format character (newline, NUL, ESC, bidirectional overrides, zero-width characters, line separators), which could
forge log lines or disguise text in the GUI, and at most ``MAX_TEXT_LENGTH`` characters.

Callers pass the ``HermesError`` subclass their users expect (``ModelFileError`` for a model file, ``DatasetError``
for a dataset); task packs should call :func:`check_name` / :func:`check_text` on every field they read.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import HermesError

MAX_NAME_LENGTH = 64
MAX_TEXT_LENGTH = 4000
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?")
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                              *(f"LPT{i}" for i in range(1, 10))})
_SHOWN = 80  # characters of an offending value quoted in a message

NAME_RULE = (f"a name is 1-{MAX_NAME_LENGTH} ASCII letters, digits, '_', '-' or '.', starting with a letter or digit, "
             f"not ending in '.', and not a Windows device name (CON, PRN, AUX, NUL, COM1-9, LPT1-9)")
TEXT_RULE = (f"text has at most {MAX_TEXT_LENGTH} characters and no control or format characters "
             f"(newline, tab, NUL, ESC, bidirectional or zero-width marks)")


class InvalidNameError(HermesError):
    """A name or a free-text field breaks the rule of this module."""


def shown(value: object) -> str:
    """``value`` quoted for a one-line message: ASCII escapes (look-alikes and control characters visible), cut."""
    text = ascii(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...'"


def name_problem(value: object) -> str | None:
    """Why ``value`` is not a valid name, or None when it is."""
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if not value:
        return "it is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"it has {len(value)} characters"
    outside = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch in "_-."))})
    if outside:
        return "it contains " + ", ".join(ascii(ch) for ch in outside[:5])
    if not _NAME.fullmatch(value):
        return "it starts with a character other than a letter or digit, or ends in '.'"
    if value.split(".", 1)[0].upper() in _WINDOWS_DEVICES:
        return "it is a Windows device name"
    return None


def check_name(value: object, field: str, error: type[HermesError] = InvalidNameError) -> str:
    """Return ``value`` if it is a valid name, else raise ``error`` naming ``field``, the value and the rule."""
    problem = name_problem(value)
    if problem:
        raise error(f"{field} {shown(value)} is not a valid name ({problem}): {NAME_RULE}")
    return value  # type: ignore[return-value]


def check_text(value: object, field: str, error: type[HermesError] = InvalidNameError,
               max_length: int = MAX_TEXT_LENGTH) -> str:
    """Return ``value`` if it is acceptable free text, else raise ``error`` naming ``field``, the value and the rule."""
    if not isinstance(value, str):
        raise error(f"{field} {shown(value)} must be text, not a {type(value).__name__}")
    if len(value) > max_length:
        raise error(f"{field} {shown(value)} is too long ({len(value)} characters): {TEXT_RULE}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co"):
            raise error(f"{field} {shown(value)} contains the character {ascii(ch)}: {TEXT_RULE}")
    return value
