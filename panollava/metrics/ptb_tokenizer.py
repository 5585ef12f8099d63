"""PTB tokenisation of captions, exactly as ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` does it.

pycocoevalcap joins all captions of one ``tokenize`` call into a file (one caption per line, ``\\n`` inside a
caption replaced by a space), runs Stanford's ``PTBTokenizer -preserveLines -lowerCase`` on it, then drops the
punctuation tokens in :data:`PUNCTUATIONS`. Two backends give that output:

- ``"python"``: :class:`panollava.metrics.ptb_lexer.PTBLexer`, the same automaton run in Python (no JVM start,
  ~0.3 s for the 1,119 QuIC-360 test groups);
- ``"java"``: the jar itself, both files in one JVM (``-ioFileList``).

``"auto"`` picks Python, and Java for inputs the Python lexer only approximates (a capital sigma), or when the
jar's lexer cannot be loaded.

One deliberate difference from pycocoevalcap: besides ``\\n`` we also replace the other characters the Java
lexer treats as line breaks (``\\r``, ``\\v``, ``\\f``, U+2028, U+2029) by a space. pycocoevalcap leaves them
in, the tokenizer then emits extra lines and every later caption is scored against the wrong tokens.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from panollava.metrics.ptb_lexer import PTBLexerUnavailable, corenlp_jar_path, get_lexer, needs_java

logger = logging.getLogger(__name__)

__all__ = [
    "PUNCTUATIONS",
    "TOKENIZERS",
    "TokenizedCaptions",
    "sanitize_caption",
    "tokenize_caption_files",
]

# pycocoevalcap/tokenizer/ptbtokenizer.py: removed after tokenisation. The bracket names are upper case while
# the tokens have been lower-cased, so "-lrb-" etc. survive; we keep that behaviour.
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
TOKENIZERS = ("auto", "python", "java")

_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

PYTHON_TOKENIZER_NAME = (
    "ptb-python: Stanford PTBTokenizer 3.4.1 (-preserveLines -lowerCase) run in Python from the scanner "
    "tables of pycocoevalcap's stanford-corenlp-3.4.1.jar, then pycocoevalcap's punctuation removal"
)
JAVA_TOKENIZER_NAME = (
    "ptb-java: java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines "
    "-lowerCase (pycocoevalcap), then pycocoevalcap's punctuation removal"
)


def sanitize_caption(text: str) -> str:
    """What the tokenizer is given for one caption: line breaks → spaces, unpaired surrogates → U+FFFD."""
    text = _LINE_BREAKS.sub(" ", text)
    if _LONE_SURROGATE.search(text):
        # Re-pair surrogate halves that form a character, replace the unpaired ones.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


@dataclass
class TokenizedCaptions:
    """Result of :func:`tokenize_caption_files`.

    Attributes:
        files: Per input mapping, ``id -> [tokenized caption, ...]`` (same order as given).
        backend: ``"python"`` or ``"java"``.
        implementation: Human-readable name of what ran (for ``metrics.json``).
        notes: Why the backend was chosen when it was not the requested one.
    """

    files: list[dict[str, list[str]]]
    backend: str
    implementation: str
    notes: list[str] = field(default_factory=list)


def _file_text(groups: Mapping[str, Sequence[str]]) -> tuple[list[str], str]:
    keys = [k for k, captions in groups.items() for _ in range(len(captions))]
    text = "\n".join(sanitize_caption(c) for captions in groups.values() for c in captions)
    return keys, text


def _strip_punctuation(keys: list[str], lines: list[str]) -> dict[str, list[str]]:
    if len(lines) < len(keys):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(keys)} captions")
    out: dict[str, list[str]] = {}
    for key, line in zip(keys, lines):
        out.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    return out


def _run_java(texts: list[str], java: str, timeout_s: float) -> list[list[str]]:
    """Tokenise several files in one JVM (``-ioFileList``: a fresh lexer per file, like separate calls)."""
    jar = corenlp_jar_path()
    with tempfile.TemporaryDirectory(prefix="panollava-ptb-") as tmp:
        pairs = []
        for i, text in enumerate(texts):
            src, dst = Path(tmp) / f"in{i}.txt", Path(tmp) / f"out{i}.txt"
            src.write_bytes(text.encode("utf-8"))
            pairs.append(f"{src} {dst}")
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(pairs) + "\n", encoding="utf-8")
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               "-ioFileList", str(listing)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"the Java PTB tokenizer did not finish within {timeout_s:.0f} s") from exc
        if proc.returncode != 0:
            raise RuntimeError(
                f"the Java PTB tokenizer failed (exit {proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')[-500:]}"
            )
        outputs = [Path(tmp) / f"out{i}.txt" for i in range(len(texts))]
        return [path.read_bytes().decode("utf-8").split("\n") for path in outputs]


def tokenize_caption_files(
    files: Sequence[Mapping[str, Sequence[str]]],
    tokenizer: str = "auto",
    *,
    java: str | None = None,
    timeout_s: float = 600.0,
) -> TokenizedCaptions:
    """PTB-tokenise captions as ``PTBTokenizer().tokenize`` would, one call per mapping.

    pycocoevalcap tokenises references and predictions in two calls; pass them as two mappings to get the
    identical result (a caption's tokens can depend on the next line of the same file).

    Args:
        files: Mappings ``id -> captions``; each one is one tokenizer input file.
        tokenizer: ``"auto"``, ``"python"`` or ``"java"``.
        java: The ``java`` executable (default: ``shutil.which("java")``).
        timeout_s: Limit for the Java tokenizer.

    Returns:
        The tokenized captions and which implementation produced them.

    Raises:
        ValueError: Unknown ``tokenizer``.
        RuntimeError: ``"java"`` requested but Java or the jar is missing, or the tokenizer failed.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    prepared = [_file_text(groups) for groups in files]
    java = java or shutil.which("java")
    notes: list[str] = []
    backend = tokenizer
    if tokenizer == "auto":
        backend = "python"
        try:
            get_lexer()
        except PTBLexerUnavailable as exc:
            if java is None:
                raise RuntimeError(f"no PTB tokenizer: {exc}; and java is not on PATH") from exc
            notes.append(f"pure-Python PTB tokenizer unavailable ({exc}); used Java")
            backend = "java"
        if backend == "python" and needs_java([text for _, text in prepared]):
            if java is not None:
                notes.append("input contains a capital sigma, whose lower-casing the Python tokenizer only "
                             "approximates; used the Java tokenizer")
                backend = "java"
            else:
                notes.append("input contains a capital sigma, lower-cased by an approximation of Java's rule "
                             "(java not on PATH)")
    if backend == "java":
        if java is None:
            raise RuntimeError("tokenizer='java' needs Java, but java is not on PATH")
        outputs = _run_java([text for _, text in prepared], java, timeout_s)
        implementation = JAVA_TOKENIZER_NAME
    else:
        lexer = get_lexer()
        outputs = [lexer.tokenize_lines(text) for _, text in prepared]
        implementation = PYTHON_TOKENIZER_NAME
    result = [_strip_punctuation(keys, lines) for (keys, _), lines in zip(prepared, outputs)]
    for note in notes:
        logger.info("%s", note)
    return TokenizedCaptions(files=result, backend=backend, implementation=implementation, notes=notes)


def java_executable() -> str | None:
    """``java`` on PATH, or ``None``."""
    return shutil.which("java")


def java_version(java: str | None) -> str | None:
    """Java version from the runtime's ``release`` file (no JVM start), e.g. ``"17.0.15"``, or ``None``."""
    if java is None:
        return None
    try:
        home = Path(os.path.realpath(java)).parent.parent
        for line in (home / "release").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("JAVA_VERSION="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None
