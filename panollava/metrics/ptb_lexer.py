"""A pure-Python Stanford PTBTokenizer 3.4.1, as pycocoevalcap runs it (``-preserveLines -lowerCase``).

pycocoevalcap tokenises captions with ``java -cp stanford-corenlp-3.4.1.jar
edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase FILE``. That tokenizer is a JFlex scanner: a
deterministic automaton (its tables) plus 54 small actions (what to emit for each rule). This module does not
re-write the grammar as regular expressions. At run time it reads the automaton's tables out of the very
``PTBLexer.class`` that pycocoevalcap ships (inside ``pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar``)
and runs them with JFlex's own scanning algorithm (longest match, rule priority, general trailing context).
The 54 actions are re-implemented from the class's bytecode with the options pycocoevalcap uses (PTB3
escaping, ``tokenizeNLs``, no americanisation, untokenizable characters deleted). Nothing of CoreNLP (GPL) is
copied into this package: without the jar there is no tokenizer.

A SHA-256 check on ``PTBLexer.class`` makes sure the actions match the tables; another jar raises
:class:`PTBLexerUnavailable` and the caller falls back to Java.

Known difference: Java lower-cases a capital sigma (``Σ``) by a word-break rule that is only approximated here
(:func:`java_lower`), so :func:`needs_java` flags texts that contain one. Everything else was checked to give
the Java output byte for byte (the whole of QuIC-360, and random text; see
``tests/test_metrics_tokenizer.py``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
import threading
import unicodedata
import zipfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "CORENLP_JAR_NAME",
    "PTBLexer",
    "PTBLexerUnavailable",
    "corenlp_jar_path",
    "get_lexer",
    "java_lower",
    "needs_java",
]

CORENLP_JAR_NAME = "stanford-corenlp-3.4.1.jar"
_CLASS_NAME = "edu/stanford/nlp/process/PTBLexer.class"
_CLASS_SHA256 = "715fdfb3652cc6796f90f28442378a0c71c92b5909f1fc934f698497987b6dd0"

# Start state of the lexical state ``YyTraditionalTreebank3`` (ZZ_LEXSTATE[4]), used unless strictTreebank3.
_START_STATE = 2
# Actions with general trailing context r1/r2: (start state of the r1 automaton, of the reversed-r2 one).
_LOOKAHEAD = {
    24: (13, 14), 30: (3, 4), 40: (5, 6), 41: (16, 17), 43: (15, 14), 44: (9, 10), 47: (7, 8), 49: (11, 12)
}
# Actions that push back a fixed number of characters before emitting.
_PUSHBACK = {25: 1, 26: 1, 32: 1, 34: 1, 36: 1, 46: 1, 51: 1, 42: 2, 48: 2, 50: 3, 53: 4}
# Emitted as matched.
_PLAIN = frozenset({3, 9, 19, 24, 25, 31, 41, 42, 43, 44, 45, 48, 50, 52, 53})
_SOFT_HYPHEN = frozenset({6, 12, 29, 30, 32, 40, 46})
_FIXED = {
    2: "<", 10: ">", 11: "--", 13: "...",
    16: "-RCB-", 17: "-LRB-", 18: "-RRB-", 20: "-LCB-", 21: "-RSB-", 22: "-LSB-",
}
_SKIP = frozenset({1, 7, 23})  # untokenizable character (deleted), white space, ignorable
_NEWLINE_ACTION = 5
_SPACE_FIX = frozenset(" \t\n\x0b\x0c\r\x85")  # PTBLexer.fixJFlex4SpaceAfterTokenBug

_SINGLE_QUOTE = re.compile("&apos;|'")
_DOUBLE_QUOTE = re.compile('"|&quot;')
_LEFT_SINGLE = re.compile("[\x91\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\x92\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\x93\u201c\xab]")
_RIGHT_DOUBLE = re.compile("[\x94\u201d\xbb]")
_AMP = re.compile("&amp;", re.IGNORECASE)
_FRACTIONS = (("\xbc", "1/4"), ("\xbd", "1/2"), ("\xbe", "3/4"), ("\u2153", "1/3"), ("\u2154", "2/3"))
_CURRENCY = re.compile("[\x80\xa4\u20a0\u20ac]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class PTBLexerUnavailable(RuntimeError):
    """The CoreNLP 3.4.1 jar that pycocoevalcap ships is missing or is not the expected build."""


def corenlp_jar_path() -> Path:
    """``.../pycocoevalcap/tokenizer/stanford-corenlp-3.4.1.jar`` (found without importing pycocoevalcap).

    Raises:
        PTBLexerUnavailable: When pycocoevalcap (or its jar) is not installed.
    """
    spec = importlib.util.find_spec("pycocoevalcap")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        jar = Path(location) / "tokenizer" / CORENLP_JAR_NAME
        if jar.is_file():
            return jar
    raise PTBLexerUnavailable(
        f"{CORENLP_JAR_NAME} not found: pycocoevalcap is not installed (searched {locations or 'nothing'}); "
        "install it with `pip install pycocoevalcap`"
    )


def _modified_utf8_units(data: bytes) -> list[int]:
    """Decode a class-file string ("modified UTF-8") into UTF-16 code units."""
    units: list[int] = []
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c < 0x80:
            units.append(c)
            i += 1
        elif c >> 5 == 0b110:
            units.append(((c & 0x1F) << 6) | (data[i + 1] & 0x3F))
            i += 2
        else:
            units.append(((c & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F))
            i += 3
    return units


def _string_constants(class_bytes: bytes) -> dict[str, list[int]]:
    """``static final String`` fields of a class file (their ``ConstantValue``), as UTF-16 code units."""
    pos = 8
    (count,) = struct.unpack_from(">H", class_bytes, pos)
    pos += 2
    pool: list[tuple[int, object] | None] = [None] * count
    i = 1
    while i < count:
        tag = class_bytes[pos]
        pos += 1
        if tag == 1:  # Utf8
            (length,) = struct.unpack_from(">H", class_bytes, pos)
            pool[i] = (tag, class_bytes[pos + 2: pos + 2 + length])
            pos += 2 + length
        elif tag in (3, 4, 9, 10, 11, 12, 17, 18):
            pos += 4
        elif tag in (5, 6):  # long/double take two slots
            pos += 8
            i += 1
        elif tag == 8:  # String
            pool[i] = (tag, struct.unpack_from(">H", class_bytes, pos)[0])
            pos += 2
        elif tag in (7, 16, 19, 20):
            pos += 2
        elif tag == 15:
            pos += 3
        else:
            raise PTBLexerUnavailable(f"unexpected constant-pool tag {tag} in {_CLASS_NAME}")
        i += 1
    pos += 6  # access flags, this class, super class
    (n_interfaces,) = struct.unpack_from(">H", class_bytes, pos)
    pos += 2 + 2 * n_interfaces
    (n_fields,) = struct.unpack_from(">H", class_bytes, pos)
    pos += 2
    fields: dict[str, list[int]] = {}
    for _ in range(n_fields):
        _access, name_index, _descriptor, n_attributes = struct.unpack_from(">HHHH", class_bytes, pos)
        pos += 8
        name = bytes(pool[name_index][1]).decode()  # type: ignore[index,arg-type]
        for _ in range(n_attributes):
            attr_name, attr_len = struct.unpack_from(">HI", class_bytes, pos)
            pos += 6
            if pool[attr_name][1] == b"ConstantValue":  # type: ignore[index]
                (value_index,) = struct.unpack_from(">H", class_bytes, pos)
                entry = pool[value_index]
                if entry is not None and entry[0] == 8:
                    utf8 = bytes(pool[entry[1]][1])  # type: ignore[index,arg-type]
                    fields[name] = _modified_utf8_units(utf8)
            pos += attr_len
    return fields


def _run_length(packed: list[int], offset: int = 0) -> list[int]:
    out: list[int] = []
    for i in range(0, len(packed), 2):
        out.extend([packed[i + 1] + offset] * packed[i])
    return out


class PTBLexer:
    """The CoreNLP 3.4.1 ``PTBLexer`` automaton, run in Python with pycocoevalcap's tokenizer options.

    Args:
        jar: The CoreNLP jar (default: the one inside pycocoevalcap).

    Raises:
        PTBLexerUnavailable: Missing jar, or a ``PTBLexer.class`` other than the verified 3.4.1 build.
    """

    def __init__(self, jar: str | Path | None = None) -> None:
        self.jar = Path(jar) if jar is not None else corenlp_jar_path()
        try:
            with zipfile.ZipFile(self.jar) as archive:
                class_bytes = archive.read(_CLASS_NAME)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise PTBLexerUnavailable(f"cannot read {_CLASS_NAME} from {self.jar}: {exc}") from exc
        digest = hashlib.sha256(class_bytes).hexdigest()
        if digest != _CLASS_SHA256:
            raise PTBLexerUnavailable(
                f"{self.jar} holds a PTBLexer.class (sha256 {digest[:12]}...) other than CoreNLP 3.4.1's "
                f"({_CLASS_SHA256[:12]}...); the pure-Python tokenizer only reproduces that build"
            )
        constants = _string_constants(class_bytes)
        packed_cmap = constants["ZZ_CMAP_PACKED"]
        cmap = _run_length(packed_cmap)
        rowmap_units = constants["ZZ_ROWMAP_PACKED_0"]
        rowmap = [(rowmap_units[i] << 16) | rowmap_units[i + 1] for i in range(0, len(rowmap_units), 2)]
        trans: list[int] = []
        part = 0
        while f"ZZ_TRANS_PACKED_{part}" in constants:
            trans.extend(_run_length(constants[f"ZZ_TRANS_PACKED_{part}"], -1))
            part += 1
        actions = _run_length(constants["ZZ_ACTION_PACKED_0"])
        attributes = _run_length(constants["ZZ_ATTRIBUTE_PACKED_0"])
        n_classes = max(cmap) + 1
        if len(cmap) != 0x10000 or not (len(actions) == len(rowmap) == len(attributes)) or max(actions) != 54:
            raise PTBLexerUnavailable(f"unexpected scanner tables in {self.jar}")
        self._cmap = bytes(cmap)  # 125 character classes: one byte each
        self._rows = [trans[r: r + n_classes] for r in rowmap]
        self._accepting = [(a & 1) == 1 for a in attributes]
        self._stop = [(a & 8) == 8 for a in attributes]
        self._actions = actions

    # -- scanning --------------------------------------------------------------------------------------------
    def _classes(self, units: array) -> list[int]:
        cmap = self._cmap
        return [cmap[u] for u in units]

    def tokens(self, text: str) -> Iterator[str | None]:
        """Tokens of ``text`` as the lexer emits them (before lower-casing); ``None`` for each newline token.

        Args:
            text: The whole input "file" (captions joined by ``\\n``).
        """
        encoded = text.encode("utf-16-le", "surrogatepass")
        units = array("H")
        units.frombytes(encoded)
        bmp_only = len(units) == len(text)  # then UTF-16 offsets are str offsets
        classes = self._classes(units)
        n = len(classes)
        rows, accepting, stop, actions = self._rows, self._accepting, self._stop, self._actions
        start_row = rows[_START_STATE]

        def span(a: int, b: int) -> str:
            if bmp_only:
                return text[a:b]
            piece = encoded[2 * a: 2 * b].decode("utf-16-le", "surrogatepass")
            # Java writes an unpaired surrogate as '?' in UTF-8.
            return _LONE_SURROGATE.sub("?", piece)

        marked = 0
        while True:
            start = marked
            current = start
            accepted = -1
            row = start_row
            while current < n:
                nxt = row[classes[current]]
                current += 1
                if nxt < 0:
                    break
                if accepting[nxt]:
                    accepted = nxt
                    marked = current
                    if stop[nxt]:
                        break
                row = rows[nxt]
            if accepted < 0:
                if start >= n:
                    return
                # not reachable: the last rule ('.') matches any character
                raise RuntimeError(f"PTB lexer: no rule matches at UTF-16 offset {start}")
            action = actions[accepted]
            if action in _LOOKAHEAD:
                marked = self._trailing_context(classes, start, marked, *_LOOKAHEAD[action])
            if action in _SKIP:
                continue
            if action == _NEWLINE_ACTION:
                yield None
                continue
            if action == 6:  # the common case: a word
                yield _remove_soft_hyphens(span(start, marked))
                continue
            if action in (44, 47):
                while marked > start and span(marked - 1, marked) in _SPACE_FIX:
                    marked -= 1
            if action == 47:  # acronym before a sentence start: "U.S." + "." (but "I." -> "I" + ".")
                if marked - start == 2:
                    marked -= 1
                    yield span(start, marked)
                else:
                    token = span(start, marked)
                    marked -= 1
                    yield token
                continue
            if action in (33, 49):  # abbreviation at a sentence end: "etc." + "."
                token = span(start, marked)
                marked -= 1
                yield token
                continue
            if action in _PUSHBACK:
                marked -= _PUSHBACK[action]
            elif action == 35:
                marked = start + 1
            yield self._emit(action, span(start, marked))

    def _trailing_context(
        self, classes: list[int], start: int, marked: int, forward: int, backward: int
    ) -> int:
        """JFlex 1.4 general lookahead ``r1/r2``: where r1 ends in the matched text ``[start, marked)``."""
        rows, accepting = self._rows, self._accepting
        final = [False] * (marked - start + 2)
        state, pos = forward, start
        while state != -1 and pos < marked:
            final[pos - start] = accepting[state]
            state = rows[state][classes[pos]]
            pos += 1
        if state != -1:
            final[pos - start] = accepting[state]
        state, pos = backward, marked
        while not (final[pos - start] and accepting[state]):
            pos -= 1
            state = rows[state][classes[pos]]
            if state == -1 or pos < start:
                raise RuntimeError("PTB lexer: trailing-context resolution failed")
        return pos

    @staticmethod
    def _emit(action: int, text: str) -> str:
        if action in _PLAIN:
            return text
        if action in _SOFT_HYPHEN:
            return _remove_soft_hyphens(text)
        if action in _FIXED:
            return _FIXED[action]
        if action == 4:  # runs of hyphens: 3 or 4 are a dash
            return "--" if 3 <= len(text) <= 4 else text
        if action in (8, 36):
            return _latex_quotes(text, probably_left=False)
        if action in (26, 35):
            return _latex_quotes(text, probably_left=True)
        if action == 14:
            for char, fraction in _FRACTIONS:
                text = text.replace(char, fraction)
            return text
        if action == 15:
            return _CURRENCY.sub("$", text.replace("\xa2", "cents").replace("\xa3", "#"))
        if action in (27, 38, 39):
            return text.replace(" ", "\xa0")
        if action in (28, 34):
            return text.replace("(", "-LRB-").replace(")", "-RRB-")
        if action == 54:
            return text.replace(" ", "\xa0").replace("(", "-LRB-").replace(")", "-RRB-")
        if action in (37, 51):
            return _AMP.sub("&", text)
        raise RuntimeError(f"PTB lexer: unhandled action {action}")

    # -- PTBTokenizer -preserveLines -lowerCase -------------------------------------------------------------
    def tokenize_lines(self, text: str) -> list[str]:
        """The output lines of ``PTBTokenizer -preserveLines -lowerCase`` for one input file.

        Args:
            text: File content (lines separated by ``\\n``).

        Returns:
            One string per output line: the line's tokens, lower-cased (``Locale.ENGLISH``), joined by spaces.
        """
        lines: list[str] = []
        current: list[str] = []
        for token in self.tokens(text):
            if token is None:
                lines.append(" ".join(current))
                current = []
            else:
                current.append(java_lower(token))
        lines.append(" ".join(current))
        return lines


def _remove_soft_hyphens(text: str) -> str:
    if "\xad" not in text:
        return text
    text = text.replace("\xad", "")
    return text or "-"


def _latex_quotes(text: str, probably_left: bool) -> str:
    if probably_left:
        text = _DOUBLE_QUOTE.sub("``", _SINGLE_QUOTE.sub("`", text))
    else:
        text = _DOUBLE_QUOTE.sub("''", _SINGLE_QUOTE.sub("'", text))
    text = _LEFT_SINGLE.sub("`", text)
    text = _RIGHT_SINGLE.sub("'", text)
    text = _LEFT_DOUBLE.sub("``", text)
    return _RIGHT_DOUBLE.sub("''", text)


def _is_cased(char: str) -> bool:
    return unicodedata.category(char) in ("Lu", "Ll", "Lt")


def _in_word(char: str) -> bool:
    return char == "_" or unicodedata.category(char)[0] in "LNM"


def java_lower(text: str) -> str:
    """``String.toLowerCase(Locale.ENGLISH)``.

    Python's ``str.lower`` agrees with Java except for the final-sigma rule: Java looks for cased letters
    within the word (``BreakIterator``), approximated here as a run of letters, digits, marks and ``_``.
    """
    if "\u03a3" not in text:
        return text.lower()
    out = []
    for i, char in enumerate(text):
        if char != "\u03a3":
            out.append(char.lower())
            continue
        before = after = False
        j = i - 1
        while j >= 0 and _in_word(text[j]):
            if _is_cased(text[j]):
                before = True
                break
            j -= 1
        j = i + 1
        while j < len(text) and _in_word(text[j]):
            if _is_cased(text[j]):
                after = True
                break
            j += 1
        out.append("\u03c2" if before and not after else "\u03c3")
    return "".join(out)


def needs_java(texts: Sequence[str]) -> bool:
    """Whether any text holds a character whose Java handling is only approximated here (capital sigma)."""
    return any("\u03a3" in t for t in texts)


_LEXER: PTBLexer | None = None
_LEXER_LOCK = threading.Lock()


def get_lexer() -> PTBLexer:
    """The process-wide :class:`PTBLexer` (tables read once, ~0.2 s).

    Raises:
        PTBLexerUnavailable: See :class:`PTBLexer`.
    """
    global _LEXER
    with _LEXER_LOCK:
        if _LEXER is None:
            _LEXER = PTBLexer()
        return _LEXER
