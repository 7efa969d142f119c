"""Coreference readers: CorefUD/GUM ``Entity=`` in CoNLL-U and CoNLL-2012, nested and malformed spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from headscope.corpus.coref_readers import is_conll2012, read_conll2012, read_coref, read_corefud
from headscope.corpus.mentions import Mention, heuristic_head, mention_type, tree_head
from headscope.manifest import Manifest


def _row(i: int, form: str, upos: str, head: int, deprel: str, feats: str = "_", misc: str = "_") -> str:
    return "\t".join([str(i), form, form.lower(), upos, "_", feats, str(head), deprel, "_", misc])


COREFUD = "\n".join([
    "# newdoc id = d1",                                                                  # 1
    "# global.Entity = eid-etype-head-other",                                            # 2
    "# sent_id = d1-1",                                                                  # 3
    _row(1, "John", "PROPN", 2, "nsubj", "Number=Sing", "Entity=(e1-person-1-)"),        # 4
    _row(2, "saw", "VERB", 0, "root"),                                                   # 5
    # "his mother" (e2) opens on the word that is also the one-word mention "his" (e1): nested.
    _row(3, "his", "PRON", 4, "nmod:poss", "Gender=Masc|Number=Sing|Person=3",
         "Entity=(e2-person-2-(e1-person-1-)"),                                          # 6
    _row(4, "mother", "NOUN", 2, "obj", "Number=Sing", "Entity=e2)"),                    # 7
    _row(5, ".", "PUNCT", 2, "punct"),                                                   # 8
    "",                                                                                  # 9
    "# sent_id = d1-2",                                                                  # 10
    "1-2\tShe's\t_\t_\t_\t_\t_\t_\t_\t_",                                                # 11
    _row(1, "She", "PRON", 3, "nsubj", "Gender=Fem|Number=Sing|Person=3", "Entity=(e2-person-1-)"),  # 12
    _row(2, "'s", "AUX", 3, "aux"),                                                      # 13
    _row(3, "calling", "VERB", 0, "root"),                                               # 14
    _row(4, "him", "PRON", 3, "obj", "Gender=Masc|Number=Sing|Person=3", "Entity=(e1-person-1-)"),  # 15
    "",                                                                                  # 16
    "# newdoc id = d2",                                                                  # 17
    "# sent_id = d2-1",                                                                  # 18
    _row(1, "The", "DET", 2, "det", misc="Entity=(e3-animal-2-"),                        # 19
    _row(2, "dog", "NOUN", 3, "nsubj", misc="Entity=e9)"),                               # 20
    _row(3, "barked", "VERB", 0, "root"),                                                # 21
    _row(4, "at", "ADP", 6, "case", misc="Entity=(e4[1/2]-person-1-"),                   # 22
    _row(5, "the", "DET", 6, "det", misc="Entity=e4[1/2])"),                             # 23
    _row(6, "man", "NOUN", 3, "obl", misc="Entity=(e4[2/2]-person-1-)"),                 # 24
    _row(7, "there", "ADV", 3, "advmod", misc="Entity=(e5-place-1-"),                    # 25
    "",                                                                                  # 26
    "# sent_id = d2-2",                                                                  # 27
    _row(1, "Yes", "INTJ", 0, "root", misc="Entity=e5)"),                                # 28
    "",
])


def test_corefud_nested_spans_heads_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "gum.conllu"
    path.write_text(COREFUD, encoding="utf-8")
    m = Manifest()
    docs = list(read_corefud(path, m))
    assert [d.doc_id for d in docs] == ["d1", "d2"]
    first, second = docs[0].sentences
    assert first.annotations["mentions"] == [
        Mention("e1", (0,), 0, 4),
        Mention("e2", (2, 3), 3, 6),   # "his mother": its head word is "mother" (the tree says his -> mother)
        Mention("e1", (2,), 2, 6),
    ]
    # The multiword token line (11) is not a word: "She" is on line 12, "him" on line 15.
    assert second.annotations["word_lines"] == [12, 13, 14, 15]
    assert second.annotations["mentions"] == [Mention("e2", (0,), 0, 12), Mention("e1", (3,), 3, 15)]
    assert [mention_type(first.upos[x.head]) for x in first.annotations["mentions"]] == [
        "proper", "nominal", "pronoun"]


def test_corefud_malformed_spans_are_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "gum.conllu"
    path.write_text(COREFUD, encoding="utf-8")
    m = Manifest()
    docs = list(read_corefud(path, m))
    mentions = docs[1].sentences[0].annotations["mentions"]
    # The discontinuous e4 ("at the" + "man") is one mention; its head word is "man".
    assert mentions == [Mention("e4", (3, 4, 5), 5, 22)]
    events = {(e.line, e.kind): e.reason for e in m.events}
    assert "'e9', which is not open" in events[(20, "skipped")]
    assert "crosses a sentence boundary" in events[(25, "skipped")]
    assert "never closed" in events[(19, "skipped")]
    assert m.counts["coref_spans_malformed"] == 3
    assert all(e.file == str(path) for e in m.events)


def test_corefud_unreadable_entity_value(tmp_path: Path) -> None:
    text = "\n".join([_row(1, "Hi", "INTJ", 0, "root", misc="Entity=(e1-x-1-)junk"), ""])
    path = tmp_path / "bad.conllu"
    path.write_text(text, encoding="utf-8")
    m = Manifest()
    docs = list(read_corefud(path, m))
    assert docs[0].sentences[0].annotations["mentions"] == [Mention("e1", (0,), 0, 1)]
    assert m.events[0].line == 1 and "cannot read Entity" in m.events[0].reason


def _conll_line(doc: str, k: int, word: str, tag: str, coref: str) -> str:
    return f"{doc}\t0\t{k}\t{word}\t{tag}\t*\t-\t-\t-\tspk\t*\t{coref}"


CONLL2012 = "\n".join([
    "#begin document (test/a); part 000",                        # 1
    _conll_line("test/a", 0, "John", "NNP", "(1)"),             # 2
    _conll_line("test/a", 1, "saw", "VBD", "-"),                # 3
    _conll_line("test/a", 2, "the", "DT", "(2"),                # 4
    _conll_line("test/a", 3, "daughter", "NN", "-"),            # 5
    _conll_line("test/a", 4, "of", "IN", "-"),                  # 6
    _conll_line("test/a", 5, "the", "DT", "(3"),                # 7
    _conll_line("test/a", 6, "kings", "NNS", "3)|2)"),          # 8
    _conll_line("test/a", 7, "/.", ".", "-"),                   # 9
    "",                                                          # 10
    _conll_line("test/a", 0, "She", "PRP", "(2)"),              # 11
    _conll_line("test/a", 1, "-LRB-", "-LRB-", "-"),            # 12
    _conll_line("test/a", 2, "and", "CC", "(4"),                # 13
    _conll_line("test/a", 3, "he", "PRP", "(1)|5)"),            # 14
    _conll_line("test/a", 4, "-RRB-", "-RRB-", "-"),            # 15
    "",                                                          # 16
    "test/a\t0\t0\tbroken\tNN",                                  # 17
    "",                                                          # 18
    "#end document",                                             # 19
    "#begin document (test/b); part 001",                        # 20
    _conll_line("test/b", 0, "It", "PRP", "(7)"),               # 21
    "",                                                          # 22
    "#end document",
    "",
])


def test_conll2012_mentions_heads_and_features(tmp_path: Path) -> None:
    path = tmp_path / "x.v4_gold_conll"
    path.write_text(CONLL2012, encoding="utf-8")
    m = Manifest()
    docs = list(read_conll2012(path, m))
    assert [d.doc_id for d in docs] == ["test/a:000", "test/b:001"]
    s1, s2 = docs[0].sentences
    assert s1.words[-1] == "." and s2.words[1] == "(" and s2.words[4] == ")"
    assert s1.annotations["mentions"] == [
        Mention("1", (0,), 0, 2),
        Mention("2", (2, 3, 4, 5, 6), 3, 4),   # "the daughter of the kings": head before "of"
        Mention("3", (5, 6), 6, 7),
    ]
    assert s2.annotations["mentions"] == [Mention("2", (0,), 0, 11), Mention("1", (3,), 3, 14)]
    assert s1.upos[:4] == ["PROPN", "VERB", "DET", "NOUN"] and s1.upos[-1] == "PUNCT"
    assert s1.feats[6] == {"Number": "Plur"}
    assert s2.feats[0] == {"Person": "3", "Number": "Sing", "Gender": "Fem"}
    events = {e.line: e.reason for e in m.events}
    assert "5 columns" in events[17]
    assert "'4' opened here is never closed" in events[13]
    assert "'5', which is not open" in events[14]
    assert m.counts["coref_spans_malformed"] == 2
    assert m.counts["sentences_read"] == 4


def test_heuristic_and_tree_heads() -> None:
    tags = ["DT", "NN", "POS", "NN", "IN", "DT", "NN", "WDT", "VBD"]  # the king 's daughter of the city that fell
    assert heuristic_head(tags, range(9)) == 3
    assert heuristic_head(["NNP", "CC", "NNP"], range(3)) == 0
    assert heuristic_head(["DT", "JJ"], range(2)) == 1  # no noun: the last word before any post-modifier
    # "the man who left": the man <- root; the span {the, man} has head "man" (index 1).
    heads = [2, 0, 4, 2]
    assert tree_head(heads, [0, 1]) == 1
    # A span that is not one subtree: the word nearest the root wins.
    assert tree_head([2, 0, 2], [0, 2]) == 0  # equal depth: the leftmost


def test_format_is_detected(tmp_path: Path) -> None:
    a = tmp_path / "plain.txt"
    a.write_text(CONLL2012, encoding="utf-8")
    b = tmp_path / "doc.conllu"
    b.write_text(COREFUD, encoding="utf-8")
    assert is_conll2012(a) and not is_conll2012(b)
    m = Manifest()
    assert len(list(read_coref(a, m))) == 2 and len(list(read_coref(b, m))) == 2
    assert m.counts["coref_documents"] == 4
    assert m.counts["coref_mentions"] == 6 + 6


@pytest.mark.shared
def test_gum_first_document(shared: Path, tmp_path: Path) -> None:
    lines = (shared / "data/ud-english-gum/en_gum-ud-dev.conllu").read_text(encoding="utf-8").splitlines()
    second = next(i for i, line in enumerate(lines) if line.startswith("# newdoc") and i > 0)
    path = tmp_path / "gum-first.conllu"
    path.write_text("\n".join(lines[:second]) + "\n", encoding="utf-8")
    m = Manifest()
    (doc,) = read_corefud(path, m)
    assert m.counts["coref_spans_malformed"] == 0
    sentence = doc.sentences[1]  # Research on adult-learned second language (L2) has provided ...
    by_entity = {(x.entity, x.start): x for x in sentence.annotations["mentions"]}
    assert sentence.words[by_entity["2", 0].head] == "Research"
    assert sentence.words[by_entity["3", 2].head] == "language"
    assert by_entity["3", 2].words == (2, 3, 4, 5, 6)
    assert by_entity["3", 2].line == lines.index(next(x for x in lines if x.startswith("3\tadult"))) + 1
