"""The prompt picks a class: the only text a class-conditional DDPM understands is its labels.

A prompt selects class ``k`` when it is, or contains as a whole word, exactly one of
``k``'s names: the checkpoint's class name (``"7"``) or one of the aliases stored with it
(``config.class_aliases["7"] == ("seven",)``). Matching ignores ASCII case; a word is ASCII
letters, digits and underscores, as in JSON Schema's patterns (``schema_pattern``).
"a handwritten 7" and "a seven" pick 7; "7 or 8", or a prompt naming no class, is a 400 whose
message lists the classes. An empty prompt samples unconditionally (label None: the null label
the network was trained on with label dropout, the same as the native API's ``label: null``).
An unconditional model ignores the prompt and says so in ``revised_prompt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from model import ModelConfig

from .errors import OpenAIError

_BLANK = r"[ \t\n\r\f\v]*"  # spelled out: Python's \s and str.strip() know more spaces than JSON Schema's
_ECMA_SPECIAL = set("\\^$.|?*+()[]{}")  # outside a character class


@dataclass(frozen=True)
class ClassChoice:
    """What a prompt asked for: the label (None: unconditional) and how to say it back."""

    label: int | None
    revised_prompt: str


@dataclass(frozen=True)
class Vocabulary:
    """Each class's names (its name first, then its aliases), for matching prompts."""

    model: str
    names: tuple[tuple[str, ...], ...]  # names[k]: class k's name and aliases

    @classmethod
    def from_config(cls, config: ModelConfig, name: str | None = None) -> Vocabulary | None:
        """None for an unconditional model. Classes without names are called by their index."""
        if not config.num_classes:
            return None
        class_names = config.class_names or tuple(str(k) for k in range(config.num_classes))
        # ModelConfig gains class_aliases (class name -> aliases); older checkpoints have none.
        aliases: Mapping[str, Sequence[str]] = getattr(config, "class_aliases", None) or {}
        names = tuple((name, *(a for a in aliases.get(name, ()) if a.strip())) for name in class_names)
        return cls(name or config.name, names)

    def describe(self) -> str:
        """Every class with its aliases: ``0 (zero), 1 (one), ...``."""
        return ", ".join(f"{n[0]} ({', '.join(n[1:])})" if len(n) > 1 else n[0] for n in self.names)

    def pattern(self) -> re.Pattern[str]:
        """Any name as a whole word; longest first, so "t-shirt" wins over "shirt" inside it.

        ASCII rules (word characters, case), the same as JSON Schema's regular expressions, so
        that ``schema_pattern`` states exactly which prompts can be accepted."""
        words = sorted({w for n in self.names for w in n}, key=len, reverse=True)
        alternation = "|".join(re.escape(w) for w in words)
        return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.ASCII | re.IGNORECASE)

    def labels_of(self, word: str) -> set[int]:
        """The classes a matched word names: one, unless two classes share a name but for case."""
        return {k for k, n in enumerate(self.names)
                if any(re.fullmatch(re.escape(w), word, re.ASCII | re.IGNORECASE) for w in n)}

    def schema_pattern(self) -> str:
        """An ECMA-262 pattern (for the OpenAPI document) that every prompt this vocabulary can
        accept matches: blank, or some name as a whole word. (Naming two classes also matches:
        that rule is beyond a regular expression, and is a 400.)"""
        def ecma(word: str) -> str:
            return "".join(f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else
                           (f"\\{c}" if c in _ECMA_SPECIAL else c) for c in word)
        words = sorted({w for n in self.names for w in n}, key=len, reverse=True)
        return rf"^{_BLANK}$|(^|\W)({'|'.join(ecma(w) for w in words)})(\W|$)"


def choose_class(prompt: str, config: ModelConfig, *, name: str | None = None) -> ClassChoice:
    """The class a prompt names, or an OpenAIError(400) that lists the classes; ``name``: the
    served model's name, for the messages (default: the checkpoint's)."""
    vocabulary = Vocabulary.from_config(config, name)
    if vocabulary is None:
        return ClassChoice(None, f"{name or config.name} is an unconditional model: the prompt was ignored")
    if re.fullmatch(_BLANK, prompt):
        return ClassChoice(None, "unconditional: the empty prompt names no class")
    labels = sorted({k for m in vocabulary.pattern().finditer(prompt) for k in vocabulary.labels_of(m.group(0))})
    if len(labels) == 1:
        k = labels[0]
        return ClassChoice(k, f"class {vocabulary.names[k][0]!r} (label {k})")
    found = "names no class" if not labels else (
        "names " + str(len(labels)) + " classes (" + ", ".join(vocabulary.names[k][0] for k in labels) + ")")
    raise OpenAIError(
        400,
        f"the prompt {found}; {vocabulary.model} draws one class per request: name exactly one of "
        f"{vocabulary.describe()}, or send an empty prompt for an unconditional sample",
        param="prompt", code="unknown_class" if not labels else "ambiguous_class")
