"""Deterministic referee checks for the law domain pack.

Every public function here has the signature
``check_xxx(instruction: str, answer: str) -> list[dict]`` and returns a list of
findings, each a dict with exactly the keys ``label`` (short kebab-case),
``severity`` ("info", "warning" or "error") and ``message`` (one sentence).
An empty list means nothing noteworthy was found.

The checks are cheap, regex-based heuristics that use only the standard
library. They look for common defects in legal answers:

* citations that look malformed (a case name with no year or report, a
  section sign with no number, a GDPR article that does not exist);
* answers to jurisdiction-specific questions that never say which
  jurisdiction they describe;
* personal advice given without any suggestion to consult a lawyer;
* wrong headline GDPR numbers (72-hour breach deadline, fine tiers);
* promises of a guaranteed outcome.

They are deliberately lenient: a finding is a prompt for a human or model
referee to look closer, not proof that the answer is wrong.
"""

import re

# Upper-case letter, including accented capitals (e.g. "Österreichische").
_UP = "A-ZÀ-ÖØ-Þ"


def _finding(label: str, severity: str, message: str) -> dict:
    """Build one finding dict with the three required keys."""
    return {"label": label, "severity": severity, "message": message}


# ---------------------------------------------------------------------------
# Citation form
# ---------------------------------------------------------------------------

# "Name v Name" or "Name v. Name": a capitalised word, a lower-case "v" or
# "v." on its own, then another capitalised word. Captures both party words.
_CASE_RE = re.compile(
    rf"\b([{_UP}][\w'’&.()-]*)\s+v\.?\s+([{_UP}][\w'’&-]*)"
)
# A year inside square brackets or parentheses, allowing a few other
# characters around it: "[1932]", "(1854)", "(2d Cir. 1947)", "(16 July 2020)".
_BRACKET_YEAR_RE = re.compile(
    r"[\[(][^\[\]()]{0,25}?\b(1[5-9]\d\d|20\d\d)\b[^\[\]()]{0,10}[\])]"
)
# US Code citation: "42 U.S.C. § 1983", "17 U.S.C. §§ 101-107".
_USC_RE = re.compile(r"\b\d+\s+U\.\s?S\.\s?C\.(?:A\.)?\s*§§?\s*\d+[\w.-]*(?:\([\w]+\))*")
# A section sign NOT followed (after optional spaces) by a digit.
_BARE_SECTION_SIGN_RE = re.compile(r"§§?(?!\s*\d)")
# UK-style section reference directly followed by a statute name ending in
# "Act", with an optional four-digit year: "s. 2 Theft Act 1968",
# "section 2 of the Law of Property (Miscellaneous Provisions) Act 1989".
_UK_SECTION_ACT_RE = re.compile(
    rf"\b(?:s|ss|section|sections)\.?\s*\d+[A-Z]?(?:\([0-9a-zA-Z]+\))*\s+"
    rf"(?:of\s+)?(?:the\s+)?"
    rf"([{_UP}][\w'’-]*(?:\s+(?:[{_UP}(][\w'’()-]*|of|and|the|for|on|in))*?)\s+Act\b"
    rf"(\s+\d{{4}})?"
)
# Article references: "Art. 6", "Article 17(1)", "Arts 44-49".
_ARTICLE_RE = re.compile(r"\bArt(?:icle)?s?\.?\s*(\d+)")
# The abbreviation "Art." followed by something other than a number
# (the full word "Article" is skipped because it starts ordinary sentences).
_BARE_ARTICLE_RE = re.compile(r"\bArt\.(?!\s*\d)")
# US reporter citation (U.S., S. Ct., F.2d/F.3d/F.4th, F. Supp., A.2d/A.3d)
# e.g. "347 U.S. 483"; the year check is done on the text that follows.
_REPORTER_RE = re.compile(
    r"\b\d{1,4}\s+(?:U\.S\.|S\.\s?Ct\.|F\.\s?(?:2d|3d|4th)|F\.\s?Supp\.(?:\s?[23]d)?|A\.\s?[23]d)\s+\d+"
)
# Fed. R. Civ. P. rule number, e.g. "Fed. R. Civ. P. 12(b)(6)".
_FRCP_RE = re.compile(r"\bFed\.\s?R\.\s?Civ\.\s?P\.\s*\d+(?:\([\w]+\))*")


def check_citation_form(instruction: str, answer: str) -> list[dict]:
    """Flag malformed legal citations (warning) and note well-formed ones (info).

    Looks at case names ("X v Y"), US Code sections, UK statute sections,
    article references (GDPR), US reporter citations and Federal Rules.
    """
    findings: list[dict] = []
    seen: set[str] = set()

    for m in _CASE_RE.finditer(answer):
        name = f"{m.group(1)} v {m.group(2)}"
        if name in seen:
            continue
        seen.add(name)
        tail = answer[m.end(): m.end() + 130]
        if _BRACKET_YEAR_RE.search(tail):
            findings.append(_finding("case-citation", "info",
                                     f"Case citation '{name}' includes a year or report reference."))
        else:
            findings.append(_finding("case-citation-incomplete", "warning",
                                     f"Case name '{name}' is not followed by a year or law report citation."))

    for m in _USC_RE.finditer(answer):
        findings.append(_finding("usc-citation", "info", f"US Code citation '{m.group(0)}' is well formed."))
    if _BARE_SECTION_SIGN_RE.search(answer):
        findings.append(_finding("section-sign-without-number", "warning",
                                 "A section sign (§) appears without a section number after it."))

    for m in _UK_SECTION_ACT_RE.finditer(answer):
        act = f"{m.group(1)} Act"
        if m.group(2):
            findings.append(_finding("statute-citation", "info",
                                     f"Statute citation to the {act}{m.group(2)} is well formed."))
        else:
            findings.append(_finding("statute-missing-year", "warning",
                                     f"Section reference to the {act} gives no year for the Act."))

    if _BARE_ARTICLE_RE.search(answer):
        findings.append(_finding("article-without-number", "warning",
                                 "An article reference ('Art.') has no article number."))
    if "GDPR" in answer:
        bad = sorted({int(n) for n in _ARTICLE_RE.findall(answer) if int(n) > 99 or int(n) == 0})
        for n in bad:
            findings.append(_finding("gdpr-article-out-of-range", "warning",
                                     f"Art. {n} is cited but the GDPR has only Articles 1 to 99."))
        if not bad and _ARTICLE_RE.search(answer):
            findings.append(_finding("article-citation", "info", "GDPR article references are within range."))

    for m in _REPORTER_RE.finditer(answer):
        # A year in parentheses should follow within a short distance,
        # after any pin cite: "550 U.S. 544, 570 (2007)".
        if not re.match(r"[\d,\s-]{0,15}\([^()]{0,25}\b(1[7-9]\d\d|20\d\d)\)", answer[m.end(): m.end() + 45]):
            findings.append(_finding("reporter-citation-missing-year", "warning",
                                     f"Reporter citation '{m.group(0)}' is not followed by a year in parentheses."))

    for m in _FRCP_RE.finditer(answer):
        findings.append(_finding("rule-citation", "info", f"Federal Rule citation '{m.group(0)}' is well formed."))
    return findings


# ---------------------------------------------------------------------------
# Jurisdiction
# ---------------------------------------------------------------------------

_US_STATES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|"
    "Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|"
    "Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|"
    "New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|"
    "Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|"
    "West Virginia|Wisconsin|Wyoming|District of Columbia"
)
# Place names that make an instruction (and name a jurisdiction in an answer).
# Case-insensitive words and US state names.
_PLACE_WORDS = (
    r"England|English|Wales|Welsh|Scotland|Scottish|Northern Ireland|United Kingdom|Great Britain|"
    r"British|Britain|United States|American|federal|European Union|Ireland|Irish|Canada|Canadian|"
    r"Australia|Australian|New Zealand|India|London|Manchester|Delaware|" + _US_STATES
)
_PLACE_RE = re.compile(rf"\b(?:{_PLACE_WORDS})\b", re.I)
# Abbreviations matched case-sensitively so that the pronoun "us" is ignored.
_ABBREV_RE = re.compile(r"(?<![\w.])(?:UK|U\.K\.|US|U\.S\.|USA|EU|EEA|GDPR|UK GDPR)(?![\w])")
# Phrases that make a question jurisdiction-specific without naming a place.
_SPECIFIC_RE = re.compile(
    r"\b(?:in my (?:state|country|jurisdiction)|my state|state law|under [a-z]+ law|"
    r"limitation period|statute of limitations?|time limit|how long do I have|deadline|"
    r"statut\w*|court rules?|civil procedure rules|CPR|Fed\. R\.|rules? of court)\b",
    re.I,
)
# Markers in an answer that identify a legal system even without a place name:
# US Code, Federal Rules, CPR, Delaware Code, UCC, Title VII, or an English
# law report / neutral citation such as "[1932] AC 562" or "[2015] UKSC 67".
_SYSTEM_MARKER_RE = re.compile(
    r"U\.S\.C\.|Fed\. R\.|\bCPR\b|\bDel\. C\.|\bUCC\b|\bTitle VII\b"
    r"|\[\d{4}\]\s+(?:\d\s+)?(?:AC|QB|KB|Ch|WLR|All ER|ICR|UKSC|UKHL|UKPC|EWCA|EWHC)\b"
)


def check_jurisdiction(instruction: str, answer: str) -> list[dict]:
    """Warn when a jurisdiction-specific question gets an answer naming no jurisdiction.

    The instruction is jurisdiction-specific if it names a place or legal
    system, or asks about limitation periods, statutes or court rules.
    """
    specific = bool(_PLACE_RE.search(instruction) or _ABBREV_RE.search(instruction)
                    or _SPECIFIC_RE.search(instruction))
    if not specific:
        return []
    named = bool(_PLACE_RE.search(answer) or _ABBREV_RE.search(answer) or _SYSTEM_MARKER_RE.search(answer))
    if named:
        return []
    return [_finding("jurisdiction-not-stated", "warning",
                     "The question is jurisdiction-specific but the answer does not say which jurisdiction's law it describes.")]


# ---------------------------------------------------------------------------
# Advice disclaimer
# ---------------------------------------------------------------------------

# First-person wording showing the user is asking about their own matter.
# Case-sensitive so that "US" (the country) is not read as the pronoun "us".
_PERSONAL_RE = re.compile(r"\b(?:I|I'm|I've|I'd|[Mm]y|[Mm]e|[Ww]e|[Ww]e're|[Ww]e've|[Oo]ur|us)\b")
# Directive phrases telling the reader what to do, including a sentence that
# opens with the imperative "Do not" / "Don't".
_DIRECTIVE_RE = re.compile(
    r"\b(?:you (?:should|must|need to|ought to|have to|will need to)|you'll need to|"
    r"I (?:would )?(?:recommend|advise|suggest)|my advice|your best (?:option|course|bet))\b"
    r"|(?:^|[.!?]\s+)(?:Do not|Don't)\b",
    re.I,
)
# Any note pointing to a qualified adviser or flagging the answer as general information.
_REFERRAL_RE = re.compile(
    r"\b(?:lawyers?|solicitors?|attorneys?|counsel|barristers?|legal advi[sc]ers?|legal professional|"
    r"not legal advice|legal advice|law centre|Citizens Advice)\b",
    re.I,
)


def check_advice_disclaimer(instruction: str, answer: str) -> list[dict]:
    """Warn when personal advice is given with no suggestion to consult a lawyer.

    Fires only if the instruction is about the user's own matter (first-person
    wording) and the answer contains directive language such as "you should".
    """
    if not (_PERSONAL_RE.search(instruction) and _DIRECTIVE_RE.search(answer)):
        return []
    if _REFERRAL_RE.search(answer):
        return []
    return [_finding("advice-without-lawyer-referral", "warning",
                     "The answer tells the user what to do in their own matter but never suggests consulting a lawyer or notes that it is general information.")]


# ---------------------------------------------------------------------------
# GDPR headline numbers
# ---------------------------------------------------------------------------

# "N hours" anywhere in the answer.
_HOURS_RE = re.compile(r"\b(\d{1,3})\s*(?:-\s*)?hours?\b", re.I)
# Breach-notification context: notifying a regulator about a breach.
_BREACH_CTX_RE = re.compile(r"(?:supervisory authority|regulator|\bICO\b|Art(?:icle)?\.?\s*33)", re.I)
# Fine ceiling paired with a percentage: "€20 million or 4%", "£8.7m or 2%".
_FINE_PAIR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:million|m)\b[^.%]{0,40}?(\d(?:\.\d)?)\s?%", re.I)
_VALID_PAIRS = {(10.0, 2.0), (20.0, 4.0), (8.7, 2.0), (17.5, 4.0)}


def check_gdpr_key_numbers(instruction: str, answer: str) -> list[dict]:
    """Error on a wrong GDPR breach-notification deadline or mismatched fine tier.

    The Art. 33 deadline is 72 hours; fine tiers pair EUR 10m with 2% and
    EUR 20m with 4% (UK: GBP 8.7m / 2% and GBP 17.5m / 4%).
    """
    findings: list[dict] = []
    if "breach" in answer.lower() and _BREACH_CTX_RE.search(answer):
        hours = {int(h) for h in _HOURS_RE.findall(answer)}
        if hours and 72 not in hours:
            findings.append(_finding("gdpr-breach-deadline-wrong", "error",
                                     "Breach notification to the supervisory authority is due within 72 hours, but the answer gives a different number of hours."))
    for amount, pct in _FINE_PAIR_RE.findall(answer):
        a, p = float(amount), float(pct)
        if a in {10.0, 20.0, 8.7, 17.5} and p in {2.0, 4.0} and (a, p) not in _VALID_PAIRS:
            findings.append(_finding("gdpr-fine-tier-mismatch", "error",
                                     f"A fine ceiling of {amount} million is paired with {pct}% of turnover, which mixes the two GDPR fine tiers."))
    if re.search(r"subject access|Art(?:icle)?\.?\s*15\b", answer, re.I) and re.search(r"\b40 (?:calendar )?days\b", answer):
        findings.append(_finding("outdated-sar-deadline", "warning",
                                 "The 40-day subject access deadline is from the repealed Data Protection Act 1998; the GDPR allows one month."))
    return findings


# ---------------------------------------------------------------------------
# Overconfident outcomes
# ---------------------------------------------------------------------------

# Phrases promising a result that no lawyer could guarantee.
_GUARANTEE_RE = re.compile(
    r"\b(?:you will (?:definitely|certainly|surely) (?:win|succeed|get)|guaranteed to (?:win|succeed)|"
    r"(?:cannot|can't) lose|100% (?:certain|sure|chance)|sure to win|no risk of losing)\b",
    re.I,
)


def check_outcome_guarantee(instruction: str, answer: str) -> list[dict]:
    """Warn when the answer promises a litigation or legal outcome."""
    m = _GUARANTEE_RE.search(answer)
    if not m:
        return []
    return [_finding("overconfident-outcome", "warning",
                     f"The answer promises an outcome ('{m.group(0)}'), which legal advice cannot guarantee.")]
