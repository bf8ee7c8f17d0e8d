"""Deterministic checks for answers in the science domain pack.

Each public ``check_*`` function takes the user's instruction and a candidate
answer and returns a list of findings.  A finding is a dict with exactly the
keys ``label`` (short kebab-case), ``severity`` ("info", "warning" or
"error") and ``message`` (one sentence).  An empty list means nothing was
flagged.

The checks are deliberately cheap heuristics built on the standard library:

* ``check_units_present`` - a numeric result to a physical calculation
  should carry a unit.
* ``check_dimensional_consistency`` - units attached to named quantities,
  to the requested quantity, and on both sides of "x unit = y unit"
  statements must have matching SI dimensions.
* ``check_significant_claims`` - absolute certainty language ("proves",
  "100% certain") is out of place in scientific conclusions.
* ``check_absolute_temperature`` - temperatures below absolute zero.

Units are mapped to dimension vectors over the SI base units
(kg, m, s, A, K, mol) so that derived units and prefixes compare correctly.
"""

import re

# ---------------------------------------------------------------------------
# Unit table: symbol -> exponents of (kg, m, s, A, K, mol)
# ---------------------------------------------------------------------------

_UNITS = {
    "g": (1, 0, 0, 0, 0, 0),
    "m": (0, 1, 0, 0, 0, 0),
    "s": (0, 0, 1, 0, 0, 0),
    "A": (0, 0, 0, 1, 0, 0),
    "K": (0, 0, 0, 0, 1, 0),
    "mol": (0, 0, 0, 0, 0, 1),
    "N": (1, 1, -2, 0, 0, 0),
    "J": (1, 2, -2, 0, 0, 0),
    "W": (1, 2, -3, 0, 0, 0),
    "Pa": (1, -1, -2, 0, 0, 0),
    "C": (0, 0, 1, 1, 0, 0),
    "V": (1, 2, -3, -1, 0, 0),
    "Ω": (1, 2, -3, -2, 0, 0),
    "ohm": (1, 2, -3, -2, 0, 0),
    "Hz": (0, 0, -1, 0, 0, 0),
    "F": (-1, -2, 4, 2, 0, 0),
    "T": (1, 0, -2, -1, 0, 0),
    # Accepted non-SI units commonly met in answers.
    "L": (0, 3, 0, 0, 0, 0),
    "h": (0, 0, 1, 0, 0, 0),
    "min": (0, 0, 1, 0, 0, 0),
    "yr": (0, 0, 1, 0, 0, 0),
    "eV": (1, 2, -2, 0, 0, 0),
    "Wh": (1, 2, -2, 0, 0, 0),
    "cal": (1, 2, -2, 0, 0, 0),
    "atm": (1, -1, -2, 0, 0, 0),
    "bar": (1, -1, -2, 0, 0, 0),
    "mmHg": (1, -1, -2, 0, 0, 0),
    "psi": (1, -1, -2, 0, 0, 0),
    "°C": (0, 0, 0, 0, 1, 0),
    "°F": (0, 0, 0, 0, 1, 0),
    "ka": (0, 0, 1, 0, 0, 0),  # thousand years (geology)
    "Ma": (0, 0, 1, 0, 0, 0),  # million years
    "Ga": (0, 0, 1, 0, 0, 0),  # billion years
    "rad": (0, 0, 0, 0, 0, 0),
    "mph": (0, 1, -1, 0, 0, 0),
    "AU": (0, 1, 0, 0, 0, 0),
    "ly": (0, 1, 0, 0, 0, 0),
    "pc": (0, 1, 0, 0, 0, 0),
    "M": (0, -3, 0, 0, 0, 1),  # molar, mol/L (only when it stands alone)
}

_PREFIXES = ("k", "m", "µ", "μ", "u", "n", "M", "G", "c", "p")

# Spelled-out unit words that also count as "a unit is present".
_UNIT_WORDS = re.compile(
    r"^(metres?|meters?|seconds?|minutes?|hours?|days?|years?|kilograms?|grams?|"
    r"newtons?|joules?|watts?|pascals?|kelvin|degrees?|coulombs?|volts?|amps?|"
    r"amperes?|ohms?|hertz|moles?|litres?|liters?|tonnes?|kilometres?|"
    r"kilometers?|light-years?|parsecs?|calories?|kcal|percent|per|times)$",
    re.IGNORECASE,
)

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")

# Quantity names -> expected dimension vector.
_QUANTITIES = {
    "speed": (0, 1, -1, 0, 0, 0),
    "velocity": (0, 1, -1, 0, 0, 0),
    "acceleration": (0, 1, -2, 0, 0, 0),
    "force": (1, 1, -2, 0, 0, 0),
    "energy": (1, 2, -2, 0, 0, 0),
    "work": (1, 2, -2, 0, 0, 0),
    "power": (1, 2, -3, 0, 0, 0),
    "pressure": (1, -1, -2, 0, 0, 0),
    "charge": (0, 0, 1, 1, 0, 0),
    "voltage": (1, 2, -3, -1, 0, 0),
    "frequency": (0, 0, -1, 0, 0, 0),
    "density": (1, -3, 0, 0, 0, 0),
}

# A number: integer or decimal, optional digit-group spaces/commas,
# optional scientific notation ("× 10^-3", "× 10⁻³", "e-3").
_NUM = (
    r"[-−]?(?:\d{1,3}(?:[ ,\u2009\u202f]\d{3})+|\d+)(?:\.\d+)?"
    r"(?:\s*[×x*]\s*10\s*(?:\^\s*[-−]?\d+|[⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)|[eE][-+]?\d+)?"
)
# A unit token: starts with a letter/µ/Ω/°, continues with unit characters.
_UNIT = r"[A-Za-zµμΩ°][A-Za-zµμΩ°0-9^⁻⁰¹²³⁴⁵⁶⁷⁸⁹·*/()\-]*"
# An arithmetic operator right after a value means it is a factor, not a result.
_OPERATOR_AFTER_RE = re.compile(r"\s*[×*/·÷+]")


def _finding(label, severity, message):
    return {"label": label, "severity": severity, "message": message}


def _clean_unit(token):
    """Strip trailing punctuation and unbalanced brackets from a unit token."""
    token = token.rstrip("-·*/")
    while token.endswith(")") and token.count(")") > token.count("("):
        token = token[:-1]
    if token.startswith("(") and token.count("(") > token.count(")"):
        token = token[1:]
    return token


def _factor_dims(factor):
    """Dimension vector of one factor such as 'kg', 'm^2', 's⁻²'; None if unknown."""
    factor = factor.strip("()").translate(_SUPERSCRIPTS)
    # Split "symbol" and optional exponent: m^2, m2, s^-1, s-1.
    match = re.fullmatch(r"([A-Za-zµμΩ°]+?)\^?\(?(-?\d+)?\)?", factor)
    if not match:
        return None
    symbol, exp = match.group(1), int(match.group(2) or 1)
    base = _UNITS.get(symbol)
    if base is None and len(symbol) > 1 and symbol[0] in _PREFIXES:
        base = _UNITS.get(symbol[1:])
        if symbol[1:] == "M":  # no prefixed "molar" symbols like kM
            base = None
    if base is None:
        return None
    return tuple(e * exp for e in base)


def unit_dimensions(unit):
    """Return the dimension vector of a unit string like 'kg·m/s²', or None."""
    if not unit:
        return None
    unit = _clean_unit(unit.strip())
    if not unit or unit == "%":
        return None
    parts = unit.split("/")
    total = [0] * 6
    for index, part in enumerate(parts):
        sign = 1 if index == 0 else -1
        for factor in re.split(r"[·*]", part.strip("()")):
            if not factor:
                return None
            dims = _factor_dims(factor)
            if dims is None:
                return None
            total = [t + sign * d for t, d in zip(total, dims)]
    return tuple(total)


def _has_unit(token):
    """True if the token after a number reads as a unit (symbol or word)."""
    if not token:
        return False
    token = _clean_unit(token)
    return token == "%" or unit_dimensions(token) is not None or bool(
        _UNIT_WORDS.match(token)
    )


# ---------------------------------------------------------------------------
# check_units_present
# ---------------------------------------------------------------------------

# Calculation-style wording in the instruction.
_CALC_RE = re.compile(
    r"\b(calculate|compute|how (much|fast|far|long|high|hot|heavy|strong|big)|"
    r"what (is|are|was|will be) the|what's the|determine|estimate|find the|work out)\b",
    re.IGNORECASE,
)
# Physical quantities whose values need units.
_PHYS_RE = re.compile(
    r"\b(speed|velocity|acceleration|force|weight|energy|work|power|pressure|"
    r"charge|voltage|current|resistance|frequency|wavelength|density|mass|"
    r"distance|height|time|period|temperature|heat|momentum|volume|radius|"
    r"half-life|luminosity|age|range|depth|enthalpy|field|how fast|how far|"
    r"how long|how high|how hot|how heavy)\b",
    re.IGNORECASE,
)
# Questions whose answer is a pure number.
_DIMENSIONLESS_RE = re.compile(
    r"\b(ratio|pH|pOH|percent(age)?|fraction|efficiency|probability|how many|"
    r"number of|count|factor|p-value|correlation|coefficient|odds|"
    r"significant figures|index|magnitude|redshift|COP|proportion|"
    r"frequenc(y|ies) of (the )?allele)\b",
    re.IGNORECASE,
)
# Where a stated result value starts: after =, ≈ or a linking word.
_RESULT_EQ_RE = re.compile(
    r"(?:=|≈|≅)\s*(?:about\s+|approximately\s+|roughly\s+|~\s*)?"
    r"(" + _NUM + r")\s*(" + _UNIT + r"|%)?"
)
_RESULT_WORD_RE = re.compile(
    r"\b(?:is|are|be|was|of|about|approximately|roughly|equals|gives|needs|takes)\s+"
    r"(?:about\s+|approximately\s+|roughly\s+|~\s*)?(" + _NUM + r")\s*(" + _UNIT + r"|%)?"
)


def check_units_present(instruction: str, answer: str) -> list[dict]:
    """Warn when a physical calculation's final numeric result has no unit.

    Only applies when the instruction is calculation-style and mentions a
    physical quantity, and not when the requested value is dimensionless
    (ratios, pH, percentages, counts, probabilities).
    """
    if not (_CALC_RE.search(instruction) and _PHYS_RE.search(instruction)):
        return []
    if _DIMENSIONLESS_RE.search(instruction):
        return []
    candidates = list(_RESULT_EQ_RE.finditer(answer)) or list(
        _RESULT_WORD_RE.finditer(answer)
    )
    if not candidates:
        return []
    last = candidates[-1]
    token = last.group(2) or ""
    if token.lower() in ("thousand", "million", "billion", "trillion"):
        # "2.5 billion years": the unit is the word after the multiplier.
        following = re.match(r"\s*(\S+)", answer[last.end():])
        token = following.group(1).rstrip(".,;:)") if following else ""
    if _has_unit(token):
        return []
    return [
        _finding(
            "missing-unit",
            "warning",
            f"The final numeric result '{last.group(1).strip()}' is given without a unit "
            "for a question about a physical quantity.",
        )
    ]


# ---------------------------------------------------------------------------
# check_dimensional_consistency
# ---------------------------------------------------------------------------

# "<number> <unit> = <number> <unit>" (an equality/conversion statement).
_EQUALITY_RE = re.compile(
    r"(" + _NUM + r")\s*(" + _UNIT + r")\s*(?:=|≈)\s*(" + _NUM + r")\s*(" + _UNIT + r")"
)
# A named quantity followed closely by a linking word and "<number> <unit>".
_NAMED_RE = re.compile(
    r"\b(?P<q>" + "|".join(_QUANTITIES) + r")\b(?P<gap>[^.;:,=\n]{0,30}?)"
    r"(?:=|≈|\bis\b|\bwas\b|\bof\b|\bequals\b|\bwill be\b)\s*"
    r"(?:about\s+|approximately\s+|roughly\s+|~\s*)?(?P<num>" + _NUM + r")\s*(?P<unit>" + _UNIT + r")",
    re.IGNORECASE,
)
# Compound names whose unit differs from the head noun ("energy density").
_COMPOUND_RE = re.compile(
    r"\b(density|constant|flux|per|rate|loss|levels?|scale|spectrum|"
    r"efficiency|budget|output|ratio|coefficient)\b",
    re.IGNORECASE,
)
# The quantity the instruction asks for.
_ASKED_RE = re.compile(
    r"\b(?:calculate|compute|find|determine|estimate|work out|what is|what's|what are|"
    r"how much)\s+(?:the\s+|its\s+|their\s+)?(?:[\w-]+\s+){0,2}?(?P<q>"
    + "|".join(_QUANTITIES) + r")\b(?!\s+(?:density|constant|per|flux|rate|loss))",
    re.IGNORECASE,
)
# Comparison questions mention quantities without asking for a value.
_COMPARE_RE = re.compile(r"\b(difference|differ|compare|versus|vs|distinguish|explain why)\b", re.I)


def _accepted_dims(name):
    """Dimensions accepted for a named quantity: itself, or per mole / per kg
    for energies (e.g. activation energy in kJ/mol, latent heat in J/kg)."""
    base = _QUANTITIES[name]
    accepted = [base]
    if name in ("energy", "work"):
        accepted.append(tuple(b - d for b, d in zip(base, (0, 0, 0, 0, 0, 1))))
        accepted.append(tuple(b - d for b, d in zip(base, (1, 0, 0, 0, 0, 0))))
    return accepted


def _dim_name(dims):
    names = ("kg", "m", "s", "A", "K", "mol")
    parts = [f"{n}^{e}" if e != 1 else n for n, e in zip(names, dims) if e]
    return "·".join(parts) or "dimensionless"


def check_dimensional_consistency(instruction: str, answer: str) -> list[dict]:
    """Flag results whose units have the wrong SI dimension.

    Three checks: (1) "<n> <unit> = <n> <unit>" with different dimensions;
    (2) a named quantity ("the speed is 5 m/s²") whose unit does not match
    it; (3) the quantity asked for in the instruction never appears in the
    answer with a matching unit although other unit-bearing results do.
    """
    findings = []
    for m in _EQUALITY_RE.finditer(answer):
        # Skip the right-hand part of a product like "2 kg × 3 m/s² = 6 N".
        before = answer[: m.start()].rstrip()
        if before.endswith(("×", "*", "·", "/", "÷", "+", "-", "−", "(", " x")):
            continue
        if m.group(2).count(")") > m.group(2).count("("):  # "(2 × 9.81 m/s²) = ..."
            continue
        if _OPERATOR_AFTER_RE.match(answer, m.end()):  # "1 kWh = 1000 W × 3600 s"
            continue
        left, right = unit_dimensions(m.group(2)), unit_dimensions(m.group(4))
        if left and right and left != right:
            findings.append(_finding(
                "unit-mismatch-equation", "error",
                f"'{m.group(0).strip()}' equates quantities with different dimensions "
                f"({_dim_name(left)} vs {_dim_name(right)}).",
            ))
    for m in _NAMED_RE.finditer(answer):
        if _COMPOUND_RE.search(m.group("gap")):
            continue
        if _OPERATOR_AFTER_RE.match(answer, m.end()):  # "E = 6.6e-34 J·s × f"
            continue
        # Use the quantity word nearest to the number (e.g. "work ... power is").
        words = re.findall(r"\b(" + "|".join(_QUANTITIES) + r")\b", m.group("gap"), re.I)
        name = (words[-1] if words else m.group("q")).lower()
        dims = unit_dimensions(m.group("unit"))
        if dims is not None and dims not in _accepted_dims(name):
            findings.append(_finding(
                "wrong-dimension-for-quantity", "error",
                f"The {name} is given as {m.group('num').strip()} {m.group('unit')}, "
                f"but a {name} should have dimension {_dim_name(_QUANTITIES[name])}.",
            ))
    asked = _ASKED_RE.search(instruction)
    target = asked.group("q").lower() if asked else None
    if target and not findings and not _COMPARE_RE.search(instruction):
        results = [unit_dimensions(m.group(2)) for m in _RESULT_EQ_RE.finditer(answer)]
        results += [unit_dimensions(m.group(2)) for m in _RESULT_WORD_RE.finditer(answer)]
        results = [d for d in results if d is not None]
        if results and _QUANTITIES[target] not in results:
            findings.append(_finding(
                "asked-quantity-wrong-unit", "error",
                f"The question asks for a {target}, but no result in the answer carries "
                f"a unit of dimension {_dim_name(_QUANTITIES[target])}.",
            ))
    return findings


# ---------------------------------------------------------------------------
# check_significant_claims
# ---------------------------------------------------------------------------

# Absolute-certainty phrases that overstate empirical conclusions.
_ABSOLUTE_RE = re.compile(
    r"\b(prove[sn]?|proving|100\s*%\s*(?:certain|sure|proven|accurate)|always true|"
    r"absolutely certain|beyond (?:any|all) doubt|settled fact|irrefutabl[ey]|"
    r"undeniabl[ey]|conclusively (?:shows|demonstrates|establishes)|never wrong)\b",
    re.IGNORECASE,
)
# Negations or hedges just before the phrase ("cannot prove", "never proves").
_NEGATION_RE = re.compile(
    r"\b(not|cannot|can't|never|no|doesn't|don't|didn't|nor|without|rather than|"
    r"isn't|aren't|unable to|impossible to)\b[\w\s']{0,20}$",
    re.IGNORECASE,
)


def check_significant_claims(instruction: str, answer: str) -> list[dict]:
    """Warn about absolute-certainty wording ("proves", "100% certain").

    Empirical science supports conclusions with evidence and uncertainty;
    claims of proof or total certainty usually overstate what data show.
    Negated uses such as "does not prove" are ignored.
    """
    findings = []
    for m in _ABSOLUTE_RE.finditer(answer):
        if _NEGATION_RE.search(answer[max(0, m.start() - 40): m.start()]):
            continue
        findings.append(_finding(
            "overstated-certainty", "warning",
            f"The phrase '{m.group(0)}' overstates certainty; empirical results "
            "support conclusions with quantified uncertainty rather than proof.",
        ))
        break  # one finding per answer is enough
    return findings


# ---------------------------------------------------------------------------
# check_absolute_temperature
# ---------------------------------------------------------------------------

# A negative temperature value in kelvin or degrees Celsius ("-5 K", "−300 °C").
_TEMP_RE = re.compile(r"([-−]\d+(?:\.\d+)?)\s*(°C|K)\b")


def check_absolute_temperature(instruction: str, answer: str) -> list[dict]:
    """Flag temperatures below absolute zero (negative kelvin, below -273.15 °C).

    Negative values preceded by Δ/change/drop/fall are temperature
    differences and are ignored.
    """
    for m in _TEMP_RE.finditer(answer):
        value = float(m.group(1).replace("−", "-"))
        context = answer[max(0, m.start() - 25): m.start()]
        if re.search(r"[\d)]\s*$", context):  # subtraction such as "1 − 293 K"
            continue
        # Temperature differences ("ΔT = -5 K", "a drop of -5 K") are allowed.
        if re.search(r"(Δ|\b(change|drop|fall|differ\w*|by|decrease|lapse)\b)", context, re.I):
            continue
        limit = 0.0 if m.group(2) == "K" else -273.15
        if value < limit:
            return [_finding(
                "below-absolute-zero", "error",
                f"The temperature {m.group(0)} is below absolute zero (0 K = -273.15 °C).",
            )]
    return []
