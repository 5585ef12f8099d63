"""The pure-Python PTB tokenizer against pycocoevalcap's Java one (SPEC §6: PTB tokenisation)."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pytest

from panollava.metrics import ptb_lexer, ptb_tokenizer
from panollava.metrics.ptb_lexer import PTBLexer, PTBLexerUnavailable, java_lower
from panollava.metrics.ptb_tokenizer import sanitize_caption, tokenize_caption_files

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="the Java reference tokenizer needs java on PATH")

# Pieces that exercise most PTBLexer rules: abbreviations, acronyms, contractions, assimilations, quotes,
# dashes, ellipses, numbers, fractions, currency, URLs, e-mail, SGML, entities, brackets, emoticons, odd
# spaces, CP1252.
PIECES = (
    'a A the The I i U.S. u.s. U.S.A. e.g. i.e. etc. etc Mr. Dr. St. st. No. Inc. Co. Ltd. vs. v. '
    "cf. approx. fig. p. Jan. Calif. Ph.D. a.m. p.m. cannot gonna gotta lemme gimme wanna 'tis "
    "'twas can't don't won't it's It's he'll we're I'm they'd you've y'all o'clock O'Neill "
    "d'Avignon l'Or rock'n'roll '90s 'em 3 42 3.5 1,000 12:40 1/2 1 1/2 ½ ¼ ⅔ $5 £3 €4 ¢ US$ 5% #1 "
    '@user #tag http://x.com/a?b=c www.example.com foo.org/bar a@b.com (555)123-4567 555-123-4567 '
    '( ) [ ] { } < > <b> </b> &amp; &lt; &apos; &quot; &nbsp; AT&T S&P-500 C++ . , ; : ! ? ?! ... '
    '.... . . . … -- --- - — – \' \'\' " ` `` ‘ ’ “ ” \x91 \x92 \x93 \x94 « » :) :-( ;) * ** \\* / '
    '_ @ # multi-story t-shirt well-lit and/or 2/3 4-5 co-op e-mail 7-11 naïve café İstanbul 汉字 。 '
    '😀 👍🏽 ° ± \xad soft\xadhyphen \u200b \ufeff \xa0 \u2003 \t \x7f \x85 \x96 Yahoo! OK! Ed.D. '
    'U.K. Mt. Ave. Blvd. Rd. Sen. Jr. Bros. tel. est. sq. Mass. Ill. Wash. Pa. Corp. Pty. Dept. '
    'Wm. Esq. ca. prop. nos. art. op. Pt. So. foo.bar hello.World 3D MP3 ~5 +5 -5 -3.5 5\'10" '
    "1990s '99 9/11 2001-09-11 10/10/2010 street. HELLO World"
).split(" ")


def _random_lines(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    seps = [" "] * 12 + [""] * 4 + ["  ", "\t", "\u00a0"]
    lines = []
    for _ in range(count):
        lines.append("".join(rng.choice(PIECES) + rng.choice(seps) for _ in range(rng.randint(0, 12))))
    ranges = [(0x20, 0x7E)] * 8 + [
        (0xA0, 0x24F), (0x400, 0x4FF), (0x590, 0x6FF), (0x2000, 0x206F), (0x20A0, 0x20CF),
        (0x2100, 0x22FF), (0x3000, 0x303F), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x80, 0x9F),
    ]
    for _ in range(count // 2):
        chars = []
        for _ in range(rng.randint(0, 40)):
            low, high = rng.choice(ranges)
            chars.append(chr(rng.randint(low, high)))
        lines.append(sanitize_caption("".join(chars)))
    return lines


def _java_lines(lines: list[str]) -> list[str]:
    return ptb_tokenizer._run_java(["\n".join(lines)], JAVA, timeout_s=300)[0]


@pytest.fixture(scope="module")
def test_annotations(shared_data_dir: Path) -> list[str]:
    with (shared_data_dir / "quic360" / "test.csv").open(encoding="utf-8", newline="") as fh:
        return [row["annotation"] for row in csv.DictReader(fh)]


@needs_java
def test_python_tokenizer_equals_pycocoevalcap_on_all_quic360_test_annotations(test_annotations):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    groups = {str(i): [a] for i, a in enumerate(test_annotations)}
    expected = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in groups.items()})
    ours = tokenize_caption_files([groups], "python")
    assert ours.backend == "python"
    assert len(expected) == len(test_annotations) == 5961
    assert ours.files[0] == expected


@needs_java
def test_python_lexer_equals_java_on_random_text():
    lines = _random_lines(seed=1, count=3000)
    lexer = ptb_lexer.get_lexer()
    python = lexer.tokenize_lines("\n".join(lines))
    java = _java_lines(lines)
    mismatches = [(line, j, p) for line, j, p in zip(lines, java, python) if j != p]
    assert len(python) == len(java) == len(lines)
    assert not mismatches, mismatches[:5]


@needs_java
def test_backends_agree_and_keep_two_files_apart():
    refs = {"a": ["A man in a t-shirt.", "etc."], "b": ["I."]}
    preds = {"a": ["Mr. Smith's cat can't sit..."], "b": [""]}
    python = tokenize_caption_files([refs, preds], "python")
    java = tokenize_caption_files([refs, preds], "java")
    assert python.files == java.files
    assert java.backend == "java"
    assert python.files[0] == {"a": ["a man in a t-shirt", "etc."], "b": ["i."]}
    assert python.files[1] == {"a": ["mr. smith 's cat ca n't sit"], "b": [""]}


def test_line_breaks_inside_a_caption_become_spaces():
    captions = {"x": ["two\nlines", "carriage\r\nreturn", "form\x0cfeed\u2028sep"], "y": ["after"]}
    out = tokenize_caption_files([captions], "python").files[0]
    assert out == {"x": ["two lines", "carriage return", "form feed sep"], "y": ["after"]}


def test_emoji_and_lone_surrogates_do_not_shift_lines():
    captions = {"x": ["a cat 😀 on a mat 👍🏽"], "y": ["broken \ud83d surrogate"], "z": ["last"]}
    out = tokenize_caption_files([captions], "python").files[0]
    assert out == {"x": ["a cat on a mat"], "y": ["broken surrogate"], "z": ["last"]}


def test_java_lower_sigma_rule():
    assert java_lower("ΟΔΟΣ") == "οδος"
    assert java_lower("ΣΟΦΟΣ5ft") == "σοφοσ5ft"  # a cased letter follows inside the word: not final
    assert java_lower("Q3Σ") == "q3ς"
    assert java_lower("İstanbul") == "i̇stanbul"


@needs_java
def test_auto_uses_java_for_capital_sigma():
    out = tokenize_caption_files([{"x": ["ΣΟΦΟΣ5ft"]}], "auto")
    assert out.backend == "java" and out.notes
    assert out.files[0] == {"x": ["σοφοσ5ft"]}


def test_unknown_jar_is_refused(tmp_path):
    import zipfile

    fake = tmp_path / "fake.jar"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("edu/stanford/nlp/process/PTBLexer.class", b"\xca\xfe\xba\xbe not the 3.4.1 lexer")
    with pytest.raises(PTBLexerUnavailable, match="other than CoreNLP 3.4.1"):
        PTBLexer(fake)


@needs_java
def test_auto_falls_back_to_java_when_the_lexer_cannot_load(monkeypatch):
    def broken():
        raise PTBLexerUnavailable("simulated")

    monkeypatch.setattr(ptb_tokenizer, "get_lexer", broken)
    out = tokenize_caption_files([{"x": ["Hello, world."]}], "auto")
    assert out.backend == "java" and "simulated" in out.notes[0]
    assert out.files[0] == {"x": ["hello world"]}


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        tokenize_caption_files([{"x": ["a"]}], "spacy")
