"""Run configuration: one typed dataclass shared by the Python API and the command line.

Every field carries its help text in ``metadata["help"]``; :mod:`headscope.cli` builds the ``headscope run``
options from these fields (and from each analysis's own options dataclass), so the API and the CLI cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

#: ``RunConfig.model``, ``dataset`` or a ``treebank`` entry of what was handed over in memory
#: (``headscope.run(model=<object>, texts=..., treebank=[TokenList, ...])``); run.json says what it was.
MEMORY = "<memory>"

#: The choices of :class:`RunConfig`'s fields (``headscope run`` offers them as ``choices=``).
Dtype = Literal["float32", "float16", "bfloat16"]
Capture = Literal["auto", "interface", "hooks", "stacked"]
#: A capture route as chosen (``auto`` resolved): ``headscope.engine.capture.choose_route``.
Route = Literal["interface", "hooks", "stacked"]
Weights = Literal["attention", "norm", "rollout"]
PaddingSide = Literal["right", "left"]
Engine = Literal["local", "ray"]
WordMode = Literal["mean", "first"]
Punctuation = Literal["clark", "all"]
Conventions = Literal["headscope", "clark", "pande", "gu", "wu"]
Parse = Literal["none", "spacy"]
TreebankInput = Literal["text", "forms"]
Bos = Literal["auto", "yes", "no"]


#: The groups of :class:`RunConfig`'s fields, in the order ``headscope run --help`` shows them.
CONFIG_GROUPS = {
    "model": "which model, and how it is loaded",
    "corpus": "what is read, and how it becomes the model's input",
    "capture": "what the analyses read of each head: capture route, weights, word level, conventions",
    "engine": "how the run goes: analyses, batches, Ray workers, checkpoints, seed",
    "output": "where the results go",
}


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, group: str | None = None,
           api_help: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field that is also a command-line option.

    Parameters
    ----------
    default : Any
        The default value (use ``default_factory`` in ``kwargs`` for lists).
    help : str
        The help text, shown by ``headscope run --help`` and in the API docs.
    flag : str, optional
        The option's spelling on the command line when it differs from ``--field-name``.
    group : str, optional
        The group of a :class:`RunConfig` field (a key of :data:`CONFIG_GROUPS`): ``headscope run --help`` and
        ``help(headscope.run)`` show the settings by group. An analysis's options form the group of the
        analysis.
    api_help : str, optional
        The keyword's description in ``help(headscope.run)`` when ``help`` describes a command-line negation
        (``--no-report``: "Skip writing report/"; the keyword ``report``: "Write report/").
    """
    metadata = {"help": help}
    if api_help is not None:
        metadata["api_help"] = api_help
    if flag is not None:
        metadata["flag"] = flag
    if group is not None:
        metadata["group"] = group
    if default is dataclasses.MISSING:
        return field(metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` type (also inside ``X | None``), or None for any other type."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


_CHOICES: dict[type, dict[str, tuple[Any, ...]]] = {}


def _field_choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The ``Literal`` fields of dataclass ``cls``, each with its allowed values (None too for ``| None``)."""
    if cls in _CHOICES:
        return _CHOICES[cls]
    hints = typing.get_type_hints(cls)
    found: dict[str, tuple[Any, ...]] = {}
    for f in dataclasses.fields(cls):
        choices = literal_choices(hints[f.name])
        if choices is not None:
            optional = type(None) in typing.get_args(hints[f.name])
            found[f.name] = (*choices, None) if optional else choices
    _CHOICES[cls] = found
    return found


def check_choices(obj: Any) -> None:
    """Raise ValueError for a field of dataclass ``obj`` typed ``Literal[...]`` that holds another value: the
    Python API's check of what ``headscope run`` checks with ``choices=``, from the same list."""
    for name, allowed in _field_choices(type(obj)).items():
        value = getattr(obj, name)
        if value not in allowed:
            shown = ", ".join(str(c) for c in allowed if c is not None)
            raise ValueError(f"{name} must be one of {shown}, got {value!r}")


def check_minimum(obj: Any, minimum: int, *names: str) -> None:
    """Raise ValueError for the first field of ``obj`` among ``names`` that is below ``minimum`` (sample sizes,
    resamples, counts), naming the field and its value."""
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _not_text(path: Any) -> str | None:
    """Why ``path`` (an existing file) cannot be a UTF-8 text file, judging by its first 64 KiB, or None."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        return "the file is empty" if not head else "the file holds only white space"
    nul = head.find(b"\0")
    if nul >= 0:
        return f"not a text file (a NUL byte at offset {nul}: binary data?); expected UTF-8 text"
    lines = head.splitlines()[:-1] or head.splitlines()  # the last line may be cut in the middle of a character
    good = 0
    for line in lines:
        try:
            line.decode("utf-8")
            good += 1
        except UnicodeDecodeError:
            pass
    if not good:
        return "not UTF-8 text (no line of its first 64 KiB decodes as UTF-8); convert it, e.g. with iconv"
    return None


#: Devices a run accepts (``cuda:N`` for a numbered GPU).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def parse_bytes(text: str | int) -> int:
    """``"1GiB"``, ``"512MiB"``, ``"2GB"``, ``"800M"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().replace(" ", "")
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
             "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
    number = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = s[len(number):].lower()
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 1GiB, 512MiB, 2GB)")
    return int(value * units[unit])


#: Default ``max_length`` of an encoder (Clark et al. use 128 tokens).
ENCODER_DEFAULT_LENGTH = 128
#: Default ``max_length`` of a decoder LM: long enough for induction and sinks, short enough that the default
#: run ends in minutes (a decoder's own limit, often 8k tokens or more, makes each window a long pass on CPU).
DECODER_DEFAULT_LENGTH = 1024
#: Default ``max_length`` under ``--conventions gu``: the T = 64 tokens each prompt is cut to in Gu et al.'s
#: released ``eval_sink_open_source.py``.
GU_LENGTH = 64


@dataclass
class RunConfig:
    """What to analyse and how: model, corpus, batching, seed and output.

    Analysis-specific settings (``--roles-tau``, ``--distance-clusters``, ...) live in each analysis's ``Options``
    dataclass; see :mod:`headscope.analyses`.
    """

    model: str = option("minilm", group="model", help="Hugging Face hub id, local model directory, or a packaged "
                        "short name (minilm, minilm-finetuned, smollm2).")
    revision: str | None = option(None, group="model", help="Model revision (branch, tag or commit) on the hub.")
    gguf_file: str | None = option(None, group="model", help="GGUF file inside the model directory (decoder LMs as "
                                   "GGUF).")
    trust_remote_code: bool = option(False, group="model", help="Allow model code from the hub (off unless asked).")
    cache_model: bool = option(True, group="model", flag="--no-cache-model",
                               help="Neither read nor write the cache of dequantized GGUF models (by default the "
                               "first float32 load of a GGUF file saves it as safetensors under "
                               "$HEADSCOPE_CACHE/models, keyed by the file's sha256, and later runs load that in "
                               "seconds).",
                               api_help="Read the dequantized GGUF model from the cache, and write it there on the "
                               "first float32 load (safetensors under $HEADSCOPE_CACHE/models, keyed by the file's "
                               "sha256): later runs load it in seconds. False neither reads nor writes it.")
    text: list[str] = option(group="corpus", help="Raw text file(s): one sentence per line, a blank line between "
                             "documents. With no --text/--treebank/--coref the packaged Wikipedia sample is used.",
                             default_factory=list)
    treebank: list[str] = option(group="corpus", help="CoNLL-U treebank file(s). The first is the "
                                 "training/selection treebank, the last the evaluation/held-out one.",
                                 default_factory=list)
    coref: list[str] = option(group="corpus", help="Coreference file(s): CoNLL-U with Entity= annotations, or "
                              "CoNLL-2012 *_conll.", default_factory=list)
    dataset: str | None = option(None, group="corpus", help="A dataset of texts: a folder saved with "
                                 "datasets' save_to_disk, parquet or JSON-lines file(s), or a hub dataset name "
                                 "(where the hub can be reached); streamed, each row one document "
                                 "(docs/inputs.md). In Python, texts= takes a list, a pandas Series or a "
                                 "Dataset object.")
    text_column: str | None = option(None, group="corpus", help="The column of --dataset (or of a DataFrame or "
                                     "Dataset given as texts=) that holds the text (default: its only text "
                                     "column).")
    split: str | None = option(None, group="corpus", help="The split of --dataset to read (default: its only "
                               "split, or train).")
    skip_missing: bool = option(False, group="corpus", help="Run without a --text/--treebank/--coref file that does "
                                "not exist (recorded in run.json) instead of stopping with an error.")
    analyses: list[str] = option(group="engine", help="Comma-separated analyses to run (see `headscope list`), or "
                                 "`all` for every analysis that applies to the model and the data given (default: "
                                 "surface,examples).", default_factory=lambda: ["surface", "examples"])
    max_length: int | None = option(None, group="corpus", help="Maximum sequence length in model tokens, capped by "
                                    "the model (default: 128 for encoders, as in Clark et al.; 1024 for decoder "
                                    "LMs, whose raw text is packed into windows of this length: pass more for long "
                                    "context; 64 under --conventions gu, each document cut to it).")
    max_segments: int | None = option(None, group="corpus", help="Stop after this many raw-text segments (default: "
                                      "all; 1000 for the packaged Wikipedia sample, as in Clark et al.).")
    max_sentences: int | None = option(None, group="corpus", help="Read at most this many sentences per treebank "
                                       "file.")
    batch_size: int = option(16, group="engine", help="Sequences per forward pass.")
    device: str = option("auto", group="model", help="auto, cpu, cuda or cuda:N.")
    dtype: Dtype = option("float32", group="model", help="Model dtype: float32, float16 or bfloat16 (statistics are "
                          "always computed in float32).")
    attention_memory: str = option("256MiB", group="capture", help="Memory budget for one layer's attention: "
                                   "batches are cut and layers computed in blocks of query rows to stay under it "
                                   "(e.g. 512MiB, 4GiB).")
    capture: Capture = option("auto", group="capture", help="How attention weights are captured: auto "
                              "(transformers' attention interface where the model uses it, else hooks), interface, "
                              "hooks, or stacked (0.1's eager path holding every layer: a reference, not for long "
                              "inputs).")
    weights: Weights = option("attention", group="capture", help="What the analyses read as a head's weights: "
                              "attention (the softmax weights, default), norm (Kobayashi et al. 2020: A[i,j]*||v_j "
                              "W_O^h||, rows renormalised; --capture interface only) or rollout (Abnar & Zuidema "
                              "2020, per head; analyses surface, distance, syntax, examples). See docs/weights.md.")
    padding_side: PaddingSide = option("right", group="capture", help="Padding side of the forward pass: right or "
                                       "left (results do not depend on it).")
    engine: Engine = option("local", group="engine", help="local (this process) or ray (Ray Data: an actor pool of "
                            "--workers model copies; needs `pip install \"headscope[ray]\"`).")
    ray_address: str | None = option(None, group="engine", help="Address of a running Ray cluster (default: start a "
                                     "local Ray instance on this machine).")
    workers: int = option(2, group="engine", help="Ray workers, each holding one copy of the model (--engine ray).")
    gpus_per_worker: float = option(0.0, group="engine", help="GPUs per Ray worker (--engine ray; 0 = CPU).")
    checkpoint_every: int = option(50, group="engine", help="Write OUT/checkpoint/ every this many batches (0: only "
                                   "on Ctrl-C/SIGTERM); removed when the run completes.")
    resume: str | None = option(None, group="engine", help="Continue the interrupted run in this output directory "
                                "from its checkpoint (the other options default to the checkpoint's).")
    overwrite: bool = option(False, group="output", help="Replace a previous run in --out whole (without it, a "
                             "folder that holds a run is refused).")
    seed: int = option(0, group="engine", help="Seed for every random choice (A/B split, samples, clustering, "
                       "probes).")
    word_attention: WordMode = option("mean", group="capture", help="How a split word attends: mean over its "
                                      "pieces' rows (the paper) or first (Clark et al.'s released code).")
    punctuation: Punctuation = option("clark", group="capture", help="Punctuation class for surface statistics: "
                                      "clark (tokens exactly '.' or ',') or all (every punctuation-only token).")
    conventions: Conventions = option("headscope", group="capture", help="Definitions of the statistics: headscope "
                                      "(ours, docs/conventions.md), clark (as Clark et al.'s released code: "
                                      "surface, syntax, similarity), pande (as the heads-hypothesis notebooks: "
                                      "roles), gu (Gu et al. 2025's sink-rate protocol: each document cut to its "
                                      "first --max-length tokens, default 64; decoder_heads) or wu (as Wu et al. "
                                      "2024's retrieval_head_detection.py: retrieval).")
    parse: Parse = option("none", group="corpus", help="Dependency parses for raw text: none or spacy (silver "
                          "parses from en_core_web_sm).")
    treebank_input: TreebankInput | None = option(None, group="corpus", help="What the model reads of a CoNLL-U "
                                                  "sentence (--treebank, --coref): text (its # text, or its forms "
                                                  "rebuilt with SpaceAfter=No) or forms (the syntactic words joined "
                                                  "by single spaces, as Clark et al.'s code fed BERT) (default: "
                                                  "text; forms under --conventions clark).")
    bos: Bos = option("auto", group="corpus", help="BOS first in every input of a decoder LM: auto (as the "
                      "tokenizer does), yes (added where the tokenizer adds none) or no (removed).")
    out: str | None = option("headscope-out", group="output", help="Output directory (a folder holding another run "
                             "is refused unless --overwrite).")
    atlas_thresholds: list[str] = option(group="output", flag="--atlas-threshold", help="Override one threshold "
                                         "of the head atlas (atlas.csv), as NAME=VALUE, e.g. prev=0.6 or "
                                         "important_fraction=0.05 (names and defaults: docs/atlas.md).",
                                         default_factory=list)
    quiet: bool = option(False, group="output", help="No progress bar or progress lines (warnings still print).")
    report: bool = option(True, group="output", help="Skip writing report/ and figures/ after the run (default: "
                          "they are written).", flag="--no-report",
                          api_help="Write report/ (the HTML report) and figures/ in out after the run; False skips "
                          "them (headscope report DIR builds them later).")

    def __post_init__(self) -> None:
        if isinstance(self.analyses, str):
            self.analyses = [a.strip() for a in self.analyses.split(",") if a.strip()]
        else:
            self.analyses = [a.strip() for item in self.analyses for a in item.split(",") if a.strip()]
        if self.max_length is not None and self.max_length < 4:
            raise ValueError(f"max_length must be at least 4, got {self.max_length}")
        # 0 would otherwise fall through to "no limit" in the readers, silently analysing everything.
        for name in ("max_segments", "max_sentences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not DEVICE_PATTERN.fullmatch(str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        check_choices(self)
        if self.conventions == "clark" and self.punctuation != "clark":
            raise ValueError("--conventions clark counts the tokens '.' and ',' as punctuation, as Clark et al.'s "
                             "code does; it cannot be combined with --punctuation all")
        if self.conventions == "wu" and importlib.util.find_spec("rouge_score") is None:
            raise ValueError("--conventions wu measures ROUGE-1 with rouge-score's stemmer, as Wu et al.'s code: "
                             "pip install 'headscope[papers]' (or rouge-score)")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        self.attention_bytes()  # fail now on a malformed size
        if isinstance(self.atlas_thresholds, str):
            self.atlas_thresholds = [self.atlas_thresholds]
        for item in self.atlas_thresholds:
            # The names are checked against the atlas's table before the model loads (atlas.parse_thresholds).
            name, sep, value = str(item).partition("=")
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not sep or not name.strip() or not math.isfinite(number):
                raise ValueError(f"atlas_thresholds: {item!r} is not NAME=VALUE with a number (e.g. prev=0.6)")

    def attention_bytes(self) -> int:
        """``attention_memory`` in bytes."""
        return parse_bytes(self.attention_memory)

    def resolved_max_length(self, model_limit: int, is_causal: bool) -> int:
        """The sequence length used: ``max_length`` or its default, capped by the model's limit."""
        default = DECODER_DEFAULT_LENGTH if is_causal else ENCODER_DEFAULT_LENGTH
        if self.conventions == "gu":
            default = GU_LENGTH  # T = 64 in Gu et al.'s eval_sink_open_source.py
        return min(self.max_length if self.max_length is not None else default, model_limit)

    def resolved_treebank_input(self) -> TreebankInput:
        """``treebank_input`` or its default: ``forms`` under ``--conventions clark``, else ``text``."""
        if self.treebank_input is not None:
            return self.treebank_input
        return "forms" if self.conventions == "clark" else "text"

    def missing_files(self) -> list[str]:
        """The corpus files named in ``text``, ``treebank`` and ``coref`` that are not regular files."""
        from pathlib import Path

        return [f"--{flag} {name}" for flag in ("text", "treebank", "coref") for name in getattr(self, flag)
                if name != MEMORY and not Path(name).expanduser().is_file()]

    def file_problems(self) -> str | None:
        """One line naming every input file that is missing, empty or not text, with what to do; None when all
        can be read or ``skip_missing`` is set (the readers then record each in run.json)."""
        problems = [f"input file not found: {name}" for name in self.missing_files()] + self.unusable_files()
        if not problems or self.skip_missing:
            return None
        return f"{'; '.join(problems)} (check the name, or pass --skip-missing to run without it)"

    def unusable_files(self) -> list[str]:
        """The corpus files that exist but hold nothing to read: empty, or not text (a NUL byte, or no valid
        UTF-8 line, in their first 64 KiB), each as ``--flag NAME: why``. Read before the model loads, so a
        wrong file costs no load; a file with some bad lines passes here and has them counted when it is read."""
        from pathlib import Path

        problems = []
        for flag in ("text", "treebank", "coref"):
            for name in getattr(self, flag):
                path = Path(name).expanduser()
                if not path.is_file():
                    continue  # missing_files() names it
                why = _not_text(path)
                if why:
                    problems.append(f"--{flag} {name}: {why}")
        return problems

    @property
    def uses_default_corpus(self) -> bool:
        """True when no corpus file was given, so the packaged Wikipedia sample is used."""
        return not (self.text or self.treebank or self.coref or self.dataset)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
