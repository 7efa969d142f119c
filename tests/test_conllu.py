"""CoNLL-U reader: multiword tokens, empty nodes, subtypes, and malformed sentences skipped with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from headscope.corpus.conllu import collapse_relation, read_conllu
from headscope.manifest import Manifest

GOOD = """# newdoc id = d1
# sent_id = s1
# text = Don't go.
1-2	Don't	_	_	_	_	_	_	_	_
1	Do	do	AUX	_	_	3	aux	_	_
2	n't	not	PART	_	_	3	advmod	_	_
3	go	go	VERB	_	Mood=Imp	0	root	_	_
3.1	you	you	PRON	_	_	_	_	3:nsubj	_
4	.	.	PUNCT	_	_	3	punct	_	SpaceAfter=No

"""

TMOD = """# sent_id = s2
1	Tomorrow	tomorrow	NOUN	_	_	2	obl:tmod	_	_
2	rain	rain	VERB	_	_	0	root	_	_

"""


def token(i: str, form: str, head: str, rel: str) -> str:
    return f"{i}\t{form}\t{form}\tX\t_\t_\t{head}\t{rel}\t_\t_"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tb.conllu"
    path.write_text(text, encoding="utf-8")
    return path


def test_multiword_tokens_and_empty_nodes(tmp_path: Path) -> None:
    manifest = Manifest()
    (s,) = list(read_conllu(write(tmp_path, GOOD), manifest))
    assert s.words == ["Do", "n't", "go", "."]
    assert s.heads == [3, 3, 0, 3]
    assert s.deprels == ["aux", "advmod", "root", "punct"]
    assert s.feats[2] == {"Mood": "Imp"}
    assert (s.doc_id, s.sent_id, s.line) == ("d1", "s1", 1)
    assert manifest.counts["sentences_read"] == 1 and manifest.counts["skipped"] == 0


def test_subtypes_kept_and_collapsible(tmp_path: Path) -> None:
    (s,) = list(read_conllu(write(tmp_path, TMOD), Manifest()))
    assert s.deprels == ["obl:tmod", "root"]
    assert [collapse_relation(r) for r in s.deprels] == ["obl", "root"]
    assert collapse_relation("acl:relcl") == "acl" and collapse_relation("nsubj") == "nsubj"


def test_analyses_collapse_relations_by_the_same_rule() -> None:
    # The analyses import no corpus module at run time, so they keep the rule themselves (analyses/relations.py).
    from headscope.analyses.relations import collapse_relation as analyses_collapse

    for deprel in ("obl:tmod", "acl:relcl", "nsubj", "root", "nmod:poss", "a:b:c", ":x", ""):
        assert analyses_collapse(deprel) == collapse_relation(deprel)


@pytest.mark.parametrize(("lines", "bad_line", "reason"), [
    ([token("1", "a", "2", "det"), token("2", "b", "0", "root"), token("3", "c", "7", "obj")], 4,
     "out of range"),
    ([token("1", "a", "2", "det"), token("2", "b", "1", "nsubj"), token("3", "c", "0", "root")], 2, "cycle"),
    ([token("1", "a", "2", "det"), token("x", "b", "0", "root")], 3, "not an integer"),
    ([token("1", "a", "2", "det"), token("2", "b", "one", "root")], 3, "HEAD"),
    ([token("1", "a", "0", "root"), token("2", "b", "0", "root")], 1, "2 roots"),
    ([token("1", "a", "0", "root"), token("3", "b", "1", "obj")], 3, "out of sequence"),
    ([token("1", "a", "0", "root"), "2\tb\tb\tX\t_\t_\t1"], 3, "columns"),
])
def test_malformed_sentence_is_skipped_with_file_and_line(tmp_path: Path, lines: list[str], bad_line: int,
                                                          reason: str) -> None:
    # The bad sentence sits between two good ones; its comment is line 1 of its block.
    text = "# sent_id = bad\n" + "\n".join(lines) + "\n\n"
    path = write(tmp_path, GOOD + text + TMOD)
    manifest = Manifest()
    sentences = list(read_conllu(path, manifest))
    assert [s.sent_id for s in sentences] == ["s1", "s2"]
    assert manifest.counts["sentences_read"] == 3 and manifest.counts["skipped"] == 1
    (event,) = manifest.events
    offset = GOOD.count("\n")
    assert event.file == str(path) and event.line == offset + bad_line
    assert reason in event.reason


def test_limit_counts_sentences_not_lines(tmp_path: Path) -> None:
    manifest = Manifest()
    sentences = list(read_conllu(write(tmp_path, GOOD + TMOD + TMOD), manifest, limit=2))
    assert len(sentences) == 2 and manifest.counts["sentences_read"] == 2


def test_first_real_sentences_of_ewt(shared: Path) -> None:
    manifest = Manifest()
    path = shared / "data/ud-english-ewt/en_ewt-ud-dev.conllu"
    sentences = list(read_conllu(path, manifest, limit=200))
    assert len(sentences) + manifest.counts["skipped"] == 200
    for s in sentences:
        n = len(s.words)
        assert len(s.heads) == len(s.deprels) == n
        assert all(0 <= h <= n for h in s.heads) and s.heads.count(0) == 1
