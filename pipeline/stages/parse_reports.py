"""Parse reports: sections, sentences, finding phrases with observation, negation, uncertainty, side and zone.

The spaCy pipeline: a local scispaCy model when `parse_reports.spacy_model` names one (a path or an installed
package), else `spacy.blank("en")` with scispaCy's tokenizer and spaCy's rule-based sentencizer. On top: an
entity ruler matching the radiology lexicon on lower-cased tokens (`pipeline/reports/lexicon.py`), then two
negspacy NegEx components: one for negation and two, with hedge cues as their triggers, for the two hedge
grades: "possible" ("may represent", "cannot be excluded", "concerning for") and "probable" ("probable",
"likely", "versus"). Scope ends at sentence ends and at
termination words ("but", "however"), so "No effusion but small pneumothorax" negates only the effusion.

Each observation mention becomes a phrase: the clause around it (cut at commas, "and", "or", "with"...)
minus leading cue words, with laterality, zone and size read from the clause (and, for a positive mention
without them, from its sentence). Study labels follow the CheXpert labeler's rule: every hedged finding is
uncertain (-1) by default; `parse_reports.hedge: two_grade` leaves a finding only offered as a possibility
unlabelled, as expert labels do (`pipeline.reports.score.study_labels`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import spacy
from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
from negspacy.termsets import termset
from scispacy.custom_tokenizer import combined_rule_tokenizer
from spacy.language import Language
from spacy.tokens import Span

from ..labels import OBSERVATIONS, label_prompts
from ..reports import lexicon as lx
from ..reports.score import combine_sides, study_labels
from ..shards import ShardWriter, csr_offsets
from ..io import progress, sha256_file
from ..versions import STAGE_VERSIONS
from .ingest import load_studies

log = logging.getLogger("pipeline.parse_reports")
STAGE = "parse_reports"

SECTION_NAMES = {
    "findings": "findings", "finding": "findings", "findings and impression": "findings",
    "findings/impression": "findings", "impression": "impression", "impressions": "impression",
    "conclusion": "impression", "conclusions": "impression", "summary": "impression",
    "final impression": "impression", "opinion": "impression",
    "indication": "indication", "indications": "indication", "history": "history",
    "clinical history": "history", "clinical information": "history", "reason for exam": "indication",
    "reason for examination": "indication", "comparison": "comparison", "comparisons": "comparison",
    "technique": "technique", "examination": "examination", "exam": "examination", "procedure": "examination",
    "type of examination": "examination", "notification": "notification", "recommendation": "recommendation",
    "recommendations": "recommendation", "wet read": "wet read", "addendum": "addendum",
}
_HEADER = re.compile(r"(?<![A-Za-z])(" + "|".join(sorted(map(re.escape, SECTION_NAMES), key=len, reverse=True))
                     + r")\s*:", re.I)
_SLASH = re.compile(r"(?<=[A-Za-z]{2})/(?=[A-Za-z]{2})")  # "PTX/effusion" -> two words; "b/l" stays
_DEID = re.compile(r"_{2,}")
_DOTS = re.compile(r"\.{2,}")  # "effusion.. Mild atelectasis": two sentences
OTHER = "OTHER"  # matched only to hide a look-alike ("pericardial effusion" is no pleural effusion)


@dataclass
class Phrase:
    section: str
    sentence_index: int
    sentence: str
    phrase: str
    observation: str
    negated: bool
    uncertain: bool
    laterality: str
    zone: str
    size: str
    hedge: str = ""  # "" | probable | possible (uncertain is True for both)


def split_sections(text: str) -> dict[str, str]:
    """Named sections of a report. Findings and impression run to the next header; other sections end at a
    blank line, so unheaded text after them counts as findings. No headers at all: the whole text is findings."""
    matches = list(_HEADER.finditer(text))
    sections: dict[str, list[str]] = {}
    loose = [text[: matches[0].start()]] if matches else [text]
    for m, nxt in zip(matches, matches[1:] + [None]):
        name = SECTION_NAMES[m.group(1).lower()]
        body = text[m.end() : nxt.start() if nxt else len(text)]
        if name not in ("findings", "impression"):
            parts = re.split(r"\n\s*\n", body.strip("\n"), maxsplit=1)
            body = parts[0]
            if len(parts) > 1:
                loose.append(parts[1])
        sections.setdefault(name, []).append(body)
    out = {k: " ".join(" ".join(v).split()) for k, v in sections.items()}
    rest = " ".join(" ".join(loose).split())
    if rest and "findings" not in out and "impression" not in out:
        out["findings"] = rest
    return out


def _clean(text: str) -> str:
    return _SLASH.sub(" / ", _DOTS.sub(". ", _DEID.sub("___", text)))


@lru_cache(maxsize=4)
def build_nlp(spacy_model: str = "") -> Language:
    """The parsing pipeline; cached per process (building the tokenizer and matchers takes ~1 s)."""
    if spacy_model:
        nlp = spacy.load(spacy_model, exclude=["ner", "lemmatizer"])
        if not nlp.has_pipe("parser") and not nlp.has_pipe("senter"):
            nlp.add_pipe("sentencizer")
    else:
        nlp = spacy.blank("en")
        nlp.tokenizer = combined_rule_tokenizer(nlp)
        nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER", "overwrite_ents": True})
    patterns = [{"label": obs, "pattern": term, "id": "mention"}
                for obs, terms in lx.OBSERVATION_TERMS.items() for term in terms]
    patterns += [{"label": obs, "pattern": term, "id": "normal"}
                 for obs, terms in lx.NORMAL_TERMS.items() for term in terms]
    patterns += [{"label": "Cardiomegaly", "pattern": p, "id": "mention"} for p in lx.CARDIOMEGALY_PATTERNS]
    patterns += [{"label": OTHER, "pattern": term} for term in lx.OTHER_TERMS]
    with nlp.select_pipes(enable=[]):
        ruler.add_patterns(patterns)
    neg = termset("en_clinical")
    neg.remove_patterns({"preceding_negations": ["cannot", "versus", "doubt", "not rule out"],
                         "following_negations": ["unlikely"]})
    neg.add_patterns(lx.NEGATION_CUES)
    nlp.add_pipe("negex", name="negation", config={"neg_termset": neg.get_patterns()})
    if not Span.has_extension("uncertain"):
        Span.set_extension("uncertain", default=False)
    nlp.add_pipe("negex", name="uncertainty", config={"neg_termset": lx.UNCERTAINTY_CUES,
                                                      "extension_name": "uncertain"})
    nlp.add_pipe("negex", name="probable", config={"neg_termset": lx.PROBABLE_CUES, "extension_name": "probable"})
    return nlp


def _clause(ent: Span) -> Span:
    """The clause around a mention: from the previous clause break to the next one, within its sentence."""
    sent, doc = ent.sent, ent.doc
    start = ent.start
    while start > sent.start and doc[start - 1].lower_ not in lx.CLAUSE_BREAKS:
        start -= 1
    end = ent.end
    while end < sent.end and doc[end].lower_ not in lx.CLAUSE_BREAKS and not doc[end].is_punct:
        end += 1
    return doc[start:end]


def _phrase(ent: Span, clause: Span) -> str:
    """The mention with its modifiers: leading cue words dropped, trailing words kept only for a place."""
    doc = ent.doc
    start = clause.start
    while start < ent.start and (doc[start].lower_ in lx.LEADING_FILLER or doc[start].is_punct):
        start += 1
    end = ent.end
    tail = _words(doc[ent.end : clause.end])
    if tail and tail[0] in lx.PLACE_PREPOSITIONS and any(
            w in lx.LATERALITY or w in lx.ZONES or w in lx.PLACE_WORDS for w in tail):
        end = clause.end
    return doc[start:end].text.strip(" .")


def _words(span: Span) -> list[str]:
    return [t.lower_.strip(".") for t in span]


def _laterality(words: list[str]) -> str:
    return combine_sides({lx.LATERALITY[w] for w in words if w in lx.LATERALITY})


def _zone(words: list[str]) -> str:
    return next((lx.ZONES[w] for w in words if w in lx.ZONES), "")


_SIZE_MEASURED = re.compile(lx.SIZE_MEASURED, re.I)
_SIZE_GRADE = re.compile(lx.SIZE_GRADE, re.I)


def size_of(text: str) -> str:
    """A phrase's size from its clause: the first measurement as written, spacing and unit normalised ("8mm" ->
    "8 mm", "3x4 centimeters" -> "3 x 4 cm"), else the grade word as the report says it ("mild", "trace",
    "small to moderate"; adverbs as adjectives), else ""."""
    m = _SIZE_MEASURED.search(text)
    if m:
        dims = re.split(r"\s*(?:x|×|by)\s*", m["dims"], flags=re.I)
        return f"{' x '.join(dims)} {lx.SIZE_UNITS[m['unit'].lower()]}"
    m = _SIZE_GRADE.search(text)
    if not m:
        return ""
    grade = lx.SIZE_GRADES[m["grade"].lower()]
    return f"{grade} to {lx.SIZE_GRADES[m['to'].lower()]}" if m["to"] else grade


def phrases_of(doc, section: str, sentence_offset: int = 0) -> list[Phrase]:
    out = []
    sents = list(doc.sents)
    index = {s.start: i for i, s in enumerate(sents)}
    for ent in doc.ents:
        if ent.label_ == OTHER:
            continue
        normal = ent.ent_id_ == "normal"
        hedge = "" if normal else "possible" if ent._.uncertain else "probable" if ent._.probable else ""
        if not normal and not hedge and any(t.lower_ in lx.HEDGE_WORDS_INSIDE for t in ent):
            hedge = "probable"  # "borderline heart size": the hedge is part of the mention
        uncertain = bool(hedge)
        negated = (bool(ent._.negex) or normal) and not uncertain
        clause = _clause(ent)
        words = _words(clause)
        phrase = _phrase(ent, clause)
        side, zone = _laterality(words), _zone(words)
        if not negated:  # a present finding may name its place elsewhere in the sentence
            sent_words = _words(ent.sent)
            side = side or _laterality(sent_words)
            zone = zone or _zone(sent_words)
        if not negated or side:  # where it sits when unsaid; "no pleural effusion" is nowhere, "no right ..." is
            zone = zone or lx.DEFAULT_ZONE.get(ent.label_, "")
        size = size_of(clause.text)
        out.append(Phrase(section, sentence_offset + index[ent.sent.start], ent.sent.text, phrase or ent.text,
                          ent.label_, negated, uncertain, side, zone, size, hedge if uncertain else ""))
    for i, sent in enumerate(sents):
        named = {p.observation for p in out if p.sentence_index == sentence_offset + i}
        out += [Phrase(section, sentence_offset + i, sent.text, text, obs, True, False, "", "", "")
                for obs, text in normal_statements(sent.text) if obs not in named]
    return out


_NORMAL = [re.compile(p) for p in lx.NORMAL_STATEMENT]
_NORMAL_SUBJECTS = {o: re.compile(p) for o, p in lx.NORMAL_SUBJECTS.items()}


def normal_statements(sentence: str) -> list[tuple[str, str]]:
    """(observation, statement) for each observation a normal statement negates: "Heart size and mediastinal
    contours are normal." -> Cardiomegaly and Enlarged Cardiomediastinum (`lexicon.NORMAL_STATEMENT`)."""
    original = " ".join(sentence.split())
    text = original.lower()
    if len(text) != len(original):  # lower-casing changed the length (rare non-ASCII): keep lower-case text
        original = text
    found: dict[str, str] = {}
    for pattern in _NORMAL:
        for m in pattern.finditer(text):
            subjects = m.group("subjects")
            for obs, subject in _NORMAL_SUBJECTS.items():
                # "cardiomediastinal silhouette" is the mediastinum's, not the heart's
                rest = _NORMAL_SUBJECTS["Enlarged Cardiomediastinum"].sub(" ", subjects) if obs == "Cardiomegaly" \
                    else subjects
                if subject.search(rest):
                    found.setdefault(obs, original[m.start() : m.end()])
    return list(found.items())


@dataclass
class ParsedReport:
    status: str  # ok | empty | no_sections | truncated
    sections: dict[str, str]
    phrases: list[Phrase]
    hedge: str = "chexpert"  # the label convention for hedged findings (pipeline.reports.score.HEDGE_CONVENTIONS)

    @property
    def labels(self) -> dict[str, float]:
        return self.labels_as(self.hedge)

    def labels_as(self, hedge: str) -> dict[str, float]:
        """The study labels under a given hedge convention ("chexpert" or "two_grade")."""
        return study_labels(((p.observation, p.negated, p.hedge) for p in self.phrases), hedge)


def parse_reports(texts: list[str], cfg: dict) -> list[ParsedReport]:
    """Parse many reports (batched through spaCy)."""
    nlp = build_nlp(cfg["spacy_model"])
    hedge = cfg.get("hedge", "chexpert")
    results, jobs = [], []
    for text in texts:
        text = text if isinstance(text, str) else ""
        status = "ok"
        if len(text) > cfg["max_chars"]:
            text, status = text[: cfg["max_chars"]], "truncated"
        if not re.search(r"[A-Za-z]{2}", _DEID.sub(" ", text)):
            results.append(ParsedReport("empty", {}, [], hedge))
            continue
        sections = split_sections(text)
        wanted = [s for s in cfg["sections"] if sections.get(s)]
        if not wanted:
            status = "no_sections"
        results.append(ParsedReport(status, sections, [], hedge))
        jobs += [(len(results) - 1, s, _clean(sections[s])) for s in wanted]
    docs = nlp.pipe((t for _, _, t in jobs), batch_size=64)
    offsets: dict[int, int] = {}
    for (i, section, _), doc in progress(zip(jobs, docs), len(jobs), "parse_reports", log, unit="sections"):
        found = phrases_of(doc, section, offsets.get(i, 0))
        offsets[i] = offsets.get(i, 0) + sum(1 for _ in doc.sents)
        results[i].phrases += found
    return results


# ------------------------------------------------------------------------------------------ outputs
PHRASE_FIELDS = [f for f in Phrase.__dataclass_fields__]


def phrase_table(ids: list[str], parsed: list[ParsedReport]) -> pd.DataFrame:
    rows = [{"study_id": sid, **asdict(p)} for sid, r in zip(ids, parsed) for p in r.phrases]
    return pd.DataFrame(rows, columns=["study_id", *PHRASE_FIELDS])


def label_table(ids: list[str], parsed: list[ParsedReport]) -> pd.DataFrame:
    return pd.DataFrame([{"study_id": sid, **r.labels} for sid, r in zip(ids, parsed)],
                        columns=["study_id", *OBSERVATIONS])


def parse_csv(table: str | Path, out_dir: str | Path, cfg: dict) -> tuple[Path, Path]:
    """Standalone use: a CSV with `study_id`, `report` -> phrases.csv and labels.csv (1 / 0 / -1 / blank)."""
    df = pd.read_csv(table, dtype={"study_id": str}, keep_default_na=False)
    missing = {"study_id", "report"} - set(df.columns)
    if missing:
        raise ValueError(f"{table}: missing column(s) {sorted(missing)}")
    parsed = parse_reports(df["report"].tolist(), cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phrase_table(df["study_id"].tolist(), parsed).to_csv(out / "phrases.csv", index=False)
    labels = label_table(df["study_id"].tolist(), parsed)
    labels.to_csv(out / "labels.csv", index=False, float_format="%.0f")
    return out / "phrases.csv", out / "labels.csv"


def agreement(parsed_labels: np.ndarray, source_labels: np.ndarray) -> float:
    """Share of (study, observation) cells where parse and source table agree; NaN equals NaN."""
    same = (parsed_labels == source_labels) | (np.isnan(parsed_labels) & np.isnan(source_labels))
    return float(same.mean()) if same.size else 1.0


def run(studies: str | Path, shard: str, out: str | Path, cfg: dict) -> dict:
    """Parse the reports of one shard's images; one row per image, in the ingest order."""
    table = load_studies(studies, shard)
    # several images of a study share its report: parse each study once
    first = table.drop_duplicates("study_id")
    parsed_by_study = dict(zip(first["study_id"], parse_reports(first["report"].tolist(), cfg)))
    parsed = [parsed_by_study[s] for s in table["study_id"]]
    flat = [p for r in parsed for p in r.phrases]
    # datasets of the `phrases` group: `phrase` itself, the attributes as phrase_<name>
    columns = {("phrase" if f == "phrase" else f"phrase_{f}"): [getattr(p, f) for p in flat] for f in PHRASE_FIELDS}
    for key, dtype in (("phrase_negated", bool), ("phrase_uncertain", bool), ("phrase_sentence_index", np.int32)):
        columns[key] = np.array(columns[key], dtype=dtype)
    labels = np.array([[r.labels[o] for o in OBSERVATIONS] for r in parsed], dtype=np.float32).reshape(-1, 14)
    source = table[OBSERVATIONS].to_numpy(dtype=np.float32).reshape(-1, 14)
    prompts = [label_prompts(r.labels) for r in parsed]
    agree = agreement(labels, source)
    with ShardWriter(out, stage=STAGE, stage_version=STAGE_VERSIONS[STAGE], config=cfg,
                     image_id=table["image_id"].tolist(), upstream={"studies.csv": sha256_file(studies)},
                     attrs={"shard": shard, "observations": OBSERVATIONS, "label_agreement": agree}) as w:
        w.rows("study_id", table["study_id"].tolist())
        w.rows("status", [r.status for r in parsed])
        w.rows("report", table["report"].tolist())
        w.rows("findings_impression", [" ".join(filter(None, (r.sections.get("findings", ""),
                                                             r.sections.get("impression", "")))) for r in parsed])
        w.rows("labels", labels)
        w.rows("labels_source", source)
        w.ragged("phrases", csr_offsets(len(r.phrases) for r in parsed), **columns)
        w.ragged("label_prompts", csr_offsets(len(p) for p in prompts), prompt=[t for p in prompts for t in p])
    counts = {"images": len(table), "studies": len(first), "phrases": len(flat),
              "empty": sum(r.status == "empty" for r in parsed), "label_agreement": agree}
    log.info("shard %s: %d images, %d studies, %d phrases, %d empty reports; labels agree with the source "
             "table on %.4f of cells", shard, *counts.values())
    return counts
