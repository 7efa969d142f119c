"""Constants and options of the roles analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from headscope.analyses.stats import Correction
from headscope.config import check_choices, option

#: The roles computed on token-level attention, in table order.
SURFACE_ROLES = ("local", "delimiter", "delimiter_cls", "delimiter_sep", "block")
#: The roles counted when asking which heads hold several roles (sub-roles would count a head twice).
MAIN_ROLES = ("local", "delimiter", "block", "syntactic")
#: Pande et al.'s syntactic relations; their union is the role ``syntactic``.
DEFAULT_RELATIONS = ("nsubj", "obj", "amod", "advmod")
#: Dependency labels a relation name also matches (spaCy's English model labels objects ``dobj``).
ALIASES = {"obj": ("obj", "dobj"), "dobj": ("obj", "dobj")}
#: Local window: positions i-WINDOW..i+WINDOW, i included.
WINDOW = 2
#: What each ``--conventions`` value means here (``run.json`` and the report).
CONVENTIONS = {
    "headscope": "headscope's definitions (docs/conventions.md)",
    "pande": "as the heads-hypothesis notebooks: scores over the row's mean attention, their local band size, "
             "block on segment words times row entropy, syntactic on pieces (first occurrence, n = pieces, exact "
             "labels), t from the population sd, no correction, one score per model input",
}
#: The kinds of model input (``Example.kind``), each one observation of the t-tests, and what they are.
INPUT_KINDS = {"segment": "packed raw-text segment", "sentence": "treebank sentence",
               "window": "coreference window"}
#: Short labels of roles in the layer x head grid.
ABBREVIATIONS = {"local": "L", "delimiter": "D", "delimiter_cls": "C", "delimiter_sep": "S", "block": "B",
                 "syntactic": "Y"}




@dataclass(frozen=True)
class RolesOptions:
    """Options of the ``roles`` analysis."""

    tau: float = option(3.0, help="Sieve-bias threshold: a head holds a role when its mean score is above "
                        "tau (roles).")
    alpha: float = option(0.05, help="Significance level of the one-sided t-tests (roles).")
    correction: Correction = option(
        "bh", help="Multiple-testing correction over all head x role tests: none (as "
        "Pande et al.) or bh (Benjamini-Hochberg) (roles).")
    relations: list[str] = option(help="Extra dependency relations to test as syntactic roles, e.g. det or "
                                  "nmod:poss (roles; comma-separated or repeated).", default_factory=list)
    role_rule: Literal["ttest", "mean"] = option(
        "ttest", help="What `has_role` means in roles.csv and the report: ttest "
        "(significant) or mean (the plain mean-above-tau rule) (roles).")
    roles_unit: Literal["sentence", "input"] = option(
        "sentence", help="What one score of the t-tests is: sentence (each source "
        "sentence of an input, as Pande et al.; a packed raw-text segment gives one score "
        "per sentence, from its own query rows) or input (one per model input: segment, "
        "treebank sentence, coreference window) (roles).")
    roles_min_n: int = option(30, help="Fewest units (sentences, segments, windows) a role's t-test needs: "
                              "below it the role is not tested (tested False, p NaN, has_role False) and the "
                              "run warns (roles).")

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        # A t-test needs two scores for a variance; fewer would test nothing while claiming to.
        if self.roles_min_n < 2:
            raise ValueError(f"roles_min_n must be at least 2, got {self.roles_min_n}")
        given = [self.relations] if isinstance(self.relations, str) else self.relations
        # Normalised once, here (the options are frozen afterwards): "det,nmod:poss" and repeats alike.
        object.__setattr__(self, "relations", [r.strip() for item in given for r in item.split(",") if r.strip()])
