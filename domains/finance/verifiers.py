"""Deterministic verifiers for the finance domain pack.

Each ``check_*`` function takes the instruction and a candidate answer and
returns a list of findings; an empty list means nothing was flagged. A
finding is a dict with exactly the keys ``label``, ``severity`` ("info",
"warning" or "error") and ``message``.

The checks are deliberately cheap and conservative: they only recompute
arithmetic the answer states in recognisable patterns, and only look for the
presence of risk language when a question is about investing. Standard
library only.
"""

import math
import re

# A number such as 1,628.89 or 5 or 0.5 (thousands separators allowed).
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
# Optional currency symbol or code in front of an amount.
_CUR = r"(?:[$£€]\s?|(?:USD|GBP|EUR)\s)?"
# Optional magnitude word after an amount.
_UNIT = r"(?:\s?(?:million|billion|thousand|bn|m|k)\b)?"

_SCALE = {"thousand": 1e3, "k": 1e3, "million": 1e6, "m": 1e6,
          "billion": 1e9, "bn": 1e9}


def _finding(label, severity, message):
    return {"label": label, "severity": severity, "message": message}


def _num(text):
    """Parse a numeric string with optional thousands separators."""
    return float(text.replace(",", ""))


def _amount(text):
    """Parse an amount such as '$1.2 million' or '250,000' into a float."""
    m = re.search(r"(" + _NUM + r")\s?(million|billion|thousand|bn|m|k)?\b",
                  text.strip(), re.I)
    value = _num(m.group(1))
    if m.group(2):
        value *= _SCALE[m.group(2).lower()]
    return value


def _decimals(text):
    """Number of decimal places written in a numeric string."""
    digits = re.search(_NUM, text).group(0)
    return len(digits.split(".")[1]) if "." in digits else 0


def _close(stated, computed, stated_text, rel_tol):
    """True if stated matches computed within rel_tol or the stated rounding."""
    if math.isclose(stated, computed, rel_tol=rel_tol, abs_tol=1e-9):
        return True
    # Allow rounding to the precision actually written (plus a little slack).
    half_unit = 0.5 * 10 ** (-_decimals(stated_text))
    scale = _amount(stated_text) / max(_num(re.search(_NUM, stated_text).group(0)), 1e-12)
    return abs(stated - computed) <= half_unit * scale * 1.01


def _sentences(text):
    """Split text into rough sentences; decimals like 1.05 are not split."""
    return re.split(r"(?<=[.!?;])\s+|\n+", text)


# "X% of Y is Z": percent, base amount, verb, result amount.
_PCT_OF = re.compile(
    r"(" + _NUM + r")\s?%\s+of\s+(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")"
    r"\s*(?:is|=|equals|gives|comes to|amounts to)\s+(?:about\s+|approximately\s+|roughly\s+)?"
    r"(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")",
    re.I)

# "from A to B, a P% increase" / "from A to B (up P%)" / "from A to B, an
# increase of P%": two amounts, then a short connector, then the percentage.
_FROM_TO = re.compile(
    r"from\s+(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")(\s?%)?\s+to\s+"
    r"(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")(\s?%)?"
    r"\s*[,(]?\s*(?:(?:which\s+is|that\s+is|representing|or|up|down|an?)\s+)?"
    r"(?:(?:increase|rise|decrease|fall|decline|drop|gain|change|growth)\s+of\s+)?"
    r"(" + _NUM + r")\s?%",
    re.I)

# "A rose/fell by P% to B": amount, movement verb, percentage, new amount.
_BY_TO = re.compile(
    r"(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")\s+"
    r"(?:rose|rises|increased|increases|grew|grows|fell|falls|decreased|decreases|declined|declines|dropped|drops)"
    r"\s+by\s+(" + _NUM + r")\s?%\s+to\s+(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")",
    re.I)


def check_percentage_arithmetic(instruction: str, answer: str) -> list[dict]:
    """Recompute 'X% of Y is Z' and 'from A to B, a P% change' statements.

    A stated result that differs from the recomputed one by more than 1%
    relative (and more than the rounding of the stated figure) is an error.
    When both ends of a "from A% to B%" change are rates, a change stated in
    percentage points is also accepted.
    """
    findings = []
    for m in _PCT_OF.finditer(answer):
        pct, base, result = _num(m.group(1)), _amount(m.group(2)), _amount(m.group(3))
        expected = pct / 100 * base
        if not _close(result, expected, m.group(3), 0.01):
            findings.append(_finding(
                "percentage-of-mismatch", "error",
                f"'{m.group(0).strip()}' is inconsistent: {pct:g}% of {base:,.2f} is {expected:,.2f}."))
    for m in _FROM_TO.finditer(answer):
        a, b, pct = _amount(m.group(1)), _amount(m.group(3)), _num(m.group(5))
        if a == 0:
            continue
        relative = abs(b - a) / abs(a) * 100
        ok = _close(pct, relative, m.group(5), 0.01)
        if m.group(2) and m.group(4):
            # Both ends are rates: also accept a change in percentage points.
            ok = ok or _close(pct, abs(b - a), m.group(5), 0.01)
        if not ok:
            findings.append(_finding(
                "percentage-change-mismatch", "error",
                f"'{m.group(0).strip()}' is inconsistent: the change from {a:,.2f} to {b:,.2f} is {relative:.2f}%."))
    for m in _BY_TO.finditer(answer):
        a, pct, b = _amount(m.group(1)), _num(m.group(2)), _amount(m.group(3))
        if a == 0:
            continue
        relative = abs(b - a) / abs(a) * 100
        if not _close(pct, relative, m.group(2), 0.01):
            findings.append(_finding(
                "percentage-change-mismatch", "error",
                f"'{m.group(0).strip()}' is inconsistent: the change from {a:,.2f} to {b:,.2f} is {relative:.2f}%."))
    return findings


# "$1,000 at 5% for 10 years ... grows to $1,628.89": principal, up to three
# words, rate, years, then a growth verb, an optional hedge word ("about")
# and the stated final amount, all within one sentence.
_GROWTH = re.compile(
    r"(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")\s+((?:[\w-]+\s+){0,3}?)at\s+(?:an?\s+)?"
    r"(" + _NUM + r")\s?%[^.;\d]{0,60}?\bfor\s+(" + _NUM + r")\s+years?"
    r"[^;\d]{0,60}?\b(?:grows?|grew|will\s+grow|would\s+grow|becomes?|accumulates?|compounds?|reach(?:es)?|"
    r"(?:will|would)\s+be\s+worth|is\s+worth)\s+(?:to\s+)?(about\s+|approximately\s+|roughly\s+|around\s+)?"
    r"(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")",
    re.I)

# Regular-contribution wording: such sentences describe annuities, not a
# single sum compounding, so they are skipped.
_CONTRIBUTION = re.compile(
    r"\b(?:per|a|each|every)\s+(?:month|quarter)\b|\b(?:each|every)\s+year\b|"
    r"\bcontribut\w*|\bannuit\w*|\bpayments?\b|\bmonthly\s+(?:saving|deposit)s?\b",
    re.I)

# Compounding frequency words and periods per year (0 = continuous).
_FREQ = [("continuous", 0), ("daily", 365), ("monthly", 12),
         ("quarterly", 4), ("semi-annual", 2), ("annual", 1)]


def _grow(principal, rate, years, m):
    """Future value with m compounding periods a year (0 = continuous)."""
    if m == 0:
        return principal * math.exp(rate * years)
    return principal * (1 + rate / m) ** (m * years)


def check_compound_growth(instruction: str, answer: str) -> list[dict]:
    """Recompute 'P at r% for n years grows to F' statements.

    Annual compounding is assumed unless the sentence names another
    frequency. Sentences about regular contributions are skipped. A mismatch
    beyond 0.2% relative (2% if hedged with "about"), and beyond the stated
    rounding, is an error; if the figure only matches a different, unstated
    frequency the finding is a warning instead.
    """
    findings = []
    for sentence in _sentences(answer):
        if _CONTRIBUTION.search(sentence):
            continue
        low = sentence.lower()
        stated_freq = next((m for word, m in _FREQ if word in low and word != "annual"), 1)
        for match in _GROWTH.finditer(sentence):
            if re.search(r"\b(?:monthly|annually|yearly)\b", match.group(2), re.I):
                continue  # "$300 monthly at 7%" is a contribution stream
            principal = _amount(match.group(1))
            rate = _num(match.group(3)) / 100
            years = _num(match.group(4))
            final_text = match.group(6)
            rest = sentence[match.end():]
            if re.match(r"\s*[×x*]", rest):
                # "grows to $1,000 × 1.05^10 = $1,628.89": use the figure after "=".
                result = re.search(r"=\s*(?:about\s+|approximately\s+)?(" + _CUR + r"(?:" + _NUM + r")" + _UNIT + r")", rest)
                if not result:
                    continue
                final_text = result.group(1)
            stated = _amount(final_text)
            tol = 0.02 if match.group(5) else 0.002  # hedged figures get 2%
            expected = _grow(principal, rate, years, stated_freq)
            if _close(stated, expected, final_text, tol):
                continue
            # Which other frequency, if any, reproduces the stated figure best?
            others = sorted((abs(_grow(principal, rate, years, m) - stated), w) for w, m in _FREQ
                            if m != stated_freq and _close(stated, _grow(principal, rate, years, m), final_text, tol))
            if others and stated_freq == 1:
                findings.append(_finding(
                    "compounding-frequency-unstated", "warning",
                    f"'{match.group(0).strip()}' ({final_text.strip()}) matches {others[0][1]} compounding, not the annual compounding assumed; state the frequency."))
            else:
                findings.append(_finding(
                    "compound-growth-mismatch", "error",
                    f"'{match.group(0).strip()}' states {final_text.strip()}, but the recomputed value is {expected:,.2f}."))
    return findings


# Signs that the request or answer concerns investment decisions. A bare
# "stock" is only counted in share-like phrases ("tech stock", "buy the
# stock"), so accounting uses such as "stock of liquid assets" do not trigger.
_ADVICE = re.compile(
    r"\bshould\s+(?:i|we)\s+(?:invest|buy|sell|hold|put)\b|\binvest(?:ing)?\s+(?:in|my|our)\b|"
    r"\bportfolios?\b|\bstocks\b|\bstock\s+(?:market|pick\w*)\b|"
    r"\b(?:buy|sell|own|hold|tech|technology|growth|penny|single|individual|dividend)\w*\s+(?:\w+\s+){0,2}?stock\b|"
    r"\bcrypto\w*|\bbitcoin\b|\betfs?\b|\bindex\s+funds?\b|"
    r"\bmutual\s+funds?\b|\b(?:fund|asset)\s+allocation\b",
    re.I)

# Risk-note language; "risk-free" on its own does not count as a warning.
_RISK_NOTE = re.compile(
    r"\brisk(?!-free)|\bvolatil\w*|\b(?:may|can|could|might)\s+(?:lose|fall|decline|drop)|"
    r"not\s+guaranteed|no\s+guarantee|past\s+performance|"
    r"not\s+(?:personal(?:ised|ized)?\s+)?(?:financial|investment)\s+advice|capital\s+at\s+risk",
    re.I)


def check_risk_disclosure(instruction: str, answer: str) -> list[dict]:
    """Warn when an investment-related answer carries no risk note."""
    if not (_ADVICE.search(instruction) or _ADVICE.search(answer)):
        return []
    if _RISK_NOTE.search(answer):
        return []
    return [_finding(
        "missing-risk-disclosure", "warning",
        "The answer discusses investing but gives no risk note (e.g. capital at risk, past performance, not personalised advice).")]
