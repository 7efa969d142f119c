"""The readers under fuzzing: random bytes, truncated files and mutated lines of real CoNLL-U, GUM
``Entity=`` and CoNLL-2012 input never raise; each rejected input is named with file and line and counted,
and the good sentences around it are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headscope.corpus.conllu import read_conllu
from headscope.corpus.coref_readers import read_coref
from headscope.corpus.text import read_text
from headscope.manifest import Manifest

GOOD = """# sent_id = a1
# text = The dog ran .
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\tEntity=(e1-animal-1-
2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\tEntity=e1)
3\tran\trun\tVERB\tVBD\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = a2
# text = It barked .
1\tIt\tit\tPRON\tPRP\t_\t2\tnsubj\t_\tEntity=(e1-animal-1)
2\tbarked\tbark\tVERB\tVBD\t_\t0\troot\t_\t_
3\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_

"""

CONLL2012 = """#begin document (doc1); part 000
doc1\t0\t0\tThe\tDT\t(TOP(S(NP*\t-\t-\t-\t-\t*\t(0
doc1\t0\t1\tdog\tNN\t*)\t-\t-\t-\t-\t*\t0)
doc1\t0\t2\tran\tVBD\t(VP*)\t-\t-\t-\t-\t*\t-
doc1\t0\t3\t.\t.\t*))\t-\t-\t-\t-\t*\t-

doc1\t0\t0\tIt\tPRP\t(TOP(S(NP*)\t-\t-\t-\t-\t*\t(0)
doc1\t0\t1\tbarked\tVBD\t(VP*)\t-\t-\t-\t-\t*\t-
doc1\t0\t2\t.\t.\t*))\t-\t-\t-\t-\t*\t-

#end document
"""

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_all(path: Path, kind: str) -> tuple[Manifest, int]:
    manifest = Manifest()
    if kind == "conllu":
        n = sum(1 for _ in read_conllu(path, manifest))
    elif kind == "coref":
        n = sum(len(doc.sentences) for doc in read_coref(path, manifest))
    else:
        n = sum(len(doc.sentences) for doc in read_text(path, manifest))
    return manifest, n


def _named(manifest: Manifest, path: Path) -> None:
    for event in manifest.events:
        assert str(path) in str(event.file) or event.file == str(path)
        assert event.line is None or event.line >= 1


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "random.conllu"
    path.write_bytes(data)
    for kind in ("conllu", "coref", "text"):
        manifest, _ = _read_all(path, kind)
        _named(manifest, path)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(GOOD)), which=st.sampled_from(["conllu", "conll2012"]))
def test_truncated_files_never_raise(tmp_path_factory: pytest.TempPathFactory, cut: int, which: str) -> None:
    text = GOOD if which == "conllu" else CONLL2012
    path = tmp_path_factory.mktemp("fuzz") / ("cut.conllu" if which == "conllu" else "cut_conll")
    path.write_text(text[:cut], encoding="utf-8")
    for kind in (("conllu", "coref") if which == "conllu" else ("coref",)):
        manifest, _ = _read_all(path, kind)
        _named(manifest, path)


@FUZZ
@given(line=st.integers(min_value=0, max_value=GOOD.count("\n") - 1),
       junk=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       column=st.integers(min_value=0, max_value=9))
def test_a_mutated_line_is_named_and_the_other_sentence_kept(tmp_path_factory: pytest.TempPathFactory, line: int,
                                                            junk: str, column: int) -> None:
    lines = GOOD.split("\n")
    separator = not lines[line].strip()  # junk there joins the two sentences into one block
    fields = lines[line].split("\t")
    if len(fields) == 10:
        fields[column] = junk.replace("\t", " ").replace("\n", " ") or "_"
        lines[line] = "\t".join(fields)
    else:
        lines[line] = junk.replace("\n", " ")
    path = tmp_path_factory.mktemp("fuzz") / "mutated.conllu"
    path.write_text("\n".join(lines), encoding="utf-8")
    manifest, n = _read_all(path, "conllu")
    _named(manifest, path)
    skipped = manifest.counts.get("skipped", 0)
    # Both sentences read, or the broken one skipped and named while the other is kept.
    assert n + skipped >= (1 if separator else 2)
    if not separator:
        assert n >= 1
    if n < 2:
        assert skipped >= 1 and any(e.kind == "skipped" for e in manifest.events)
    coref_manifest, _ = _read_all(path, "coref")
    _named(coref_manifest, path)


def test_the_fuzzed_samples_are_good_input(tmp_path: Path) -> None:
    """The seeds of the fuzzing are valid as written, so the tests above really start from good input."""
    conllu = tmp_path / "good.conllu"
    conllu.write_text(GOOD, encoding="utf-8")
    manifest, n = _read_all(conllu, "conllu")
    assert n == 2 and not manifest.events
    manifest, n = _read_all(conllu, "coref")
    assert n == 2 and not manifest.events
    conll = tmp_path / "good_conll"
    conll.write_text(CONLL2012, encoding="utf-8")
    manifest, n = _read_all(conll, "coref")
    assert n == 2 and not manifest.events
