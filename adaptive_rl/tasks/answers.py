"""Final-answer extraction from model outputs and reference solutions.

Completions of math prompts state their answer in one of a few conventions; the extractors here
find it, in linear time on any input (no backtracking-heavy regexes, no recursion), so a
100k-character completion or 100k nested braces cost milliseconds:
  * `extract_boxed`: the content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces allowed;
    also the brace-less `\\boxed 5` form);
  * `extract_gsm8k`: the GSM8K convention `#### 1,234` -> "1234";
  * `extract_last_number`: the last number in the text ("-1,234.5", "3/4", ".5");
  * `extract_answer`: the first of the three that finds something.

`reference_answer(text, fmt)` turns a dataset's answer field (a GSM8K solution ending in
"#### x", a MATH solution with a boxed answer, or a bare answer) into the bare answer.
"""

from __future__ import annotations

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_MARK = "####"
# No nested quantifiers, so matching is linear: thousands-grouped numbers first, so "1,234"
# is one number while "1,2,3" is three.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# A number that ends the line or is followed by space or punctuation (so "3+4" is not "3").
_LEADING_NUMBER = re.compile(
    r"-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)(?=$|\s|[.;:!?%])")
ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "raw")


def _closing_braces(text: str) -> dict[int, int]:
  """Maps the index of each matched "{" to the index of its "}" (one pass, explicit stack).

  Escaped braces (`\\{`, `\\}`) are literal characters and are not matched.
  """
  match, stack = {}, []
  i, n = 0, len(text)
  while i < n:
    ch = text[i]
    if ch == "\\":
      i += 2  # the escaped character (if any) is literal
      continue
    if ch == "{":
      stack.append(i)
    elif ch == "}" and stack:
      match[stack.pop()] = i
    i += 1
  return match


def extract_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` or `\\fbox{...}` in `text`.

  "Last" means the one that ends last, so for `\\boxed{a \\fbox{b}}` it is the outer box.
  Braces nest (`\\boxed{\\frac{1}{2}}` -> "\\frac{1}{2}"); a box whose braces never close is
  ignored. The brace-less form `\\boxed 5` takes the characters up to the next whitespace or "$".

  Args:
    text: a completion or a solution.

  Returns:
    The content, stripped of surrounding whitespace, or None when there is no complete box.
  """
  if "\\boxed" not in text and "\\fbox" not in text:
    return None
  closing = None  # computed lazily: only texts with a box pay for it
  best_end, best = -1, None
  n = len(text)
  for m in _BOX_COMMAND.finditer(text):
    j = m.end()
    while j < n and text[j] in " \t":
      j += 1
    if j < n and text[j] == "{":
      if closing is None:
        closing = _closing_braces(text)
      end = closing.get(j)
      if end is None:
        continue
      content = text[j + 1:end]
    elif j > m.end() and j < n and text[j] not in "\n$":  # "\boxed 5"
      end = j
      while end < n and not text[end].isspace() and text[end] != "$":
        end += 1
      content = text[j:end]
    else:
      continue
    if end > best_end:
      best_end, best = end, content.strip()
  return best


def extract_gsm8k(text: str) -> str | None:
  """The answer after the last "####" marker, GSM8K style, with thousands separators removed.

  Args:
    text: e.g. "... so she has 1,234 apples.\\n#### 1,234".

  Returns:
    When the marker's line starts with a number (after an optional "$"): that number without
    thousands separators ("#### $1,234.00 total" -> "1234.00"). Otherwise the rest of the line,
    stripped, without a trailing "." ("#### \\frac{1}{2}." -> "\\frac{1}{2}"). None when there
    is no marker or nothing follows it.
  """
  at = text.rfind(_GSM8K_MARK)
  if at < 0:
    return None
  rest = text[at + len(_GSM8K_MARK):]
  newline = rest.find("\n")
  line = (rest if newline < 0 else rest[:newline]).strip().lstrip("$").strip()
  number = _LEADING_NUMBER.match(line)
  if number:
    return number.group(0).replace(",", "")
  return line.rstrip(".").strip() or None


def _strip_thousands(text: str) -> str:
  """Removes "," separators from thousands-grouped numbers ("1,234,567" -> "1234567")."""
  if "," not in text:
    return text
  return re.sub(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])",
                lambda m: m.group(0).replace(",", ""), text)


def extract_last_number(text: str) -> str | None:
  """The last number in `text`: an integer, decimal or simple fraction, possibly negative.

  Args:
    text: any text.

  Returns:
    The number as written, without thousands separators ("1,234.5" -> "1234.5", "3/4", "-2"),
    or None when the text contains no digit.
  """
  last = None
  for last in _NUMBER.finditer(text):
    pass
  return None if last is None else last.group(0).replace(",", "")


def extract_answer(text: str) -> str | None:
  """The final answer of a completion: boxed, else after "####", else the last number.

  Args:
    text: a model completion.

  Returns:
    The answer string, or None when none of the conventions finds one (an empty box counts as
    no answer).
  """
  for extract in (extract_boxed, extract_gsm8k, extract_last_number):
    found = extract(text)
    if found:
      return found
  return None


def reference_answer(text: str, fmt: str = "auto") -> str | None:
  """The bare answer of a dataset's answer field.

  Args:
    text: the field, e.g. a GSM8K solution ending in "#### 72", a MATH solution containing
      `\\boxed{...}`, or a bare answer.
    fmt: "gsm8k" (must contain "####"), "boxed" (must contain a complete box), "raw" (the text
      itself, stripped), or "auto": "####" if present, else a box if present, else raw.

  Returns:
    The answer, or None when `fmt` requires a marker the text lacks (or the answer is empty).

  Raises:
    ValueError: for an unknown `fmt`.
  """
  if fmt not in ANSWER_FORMATS:
    raise ValueError(f"reference_answer: fmt must be one of {ANSWER_FORMATS}, got {fmt!r}")
  if fmt in ("auto", "gsm8k") and (fmt == "gsm8k" or _GSM8K_MARK in text):
    return extract_gsm8k(text)
  if fmt in ("auto", "boxed"):
    boxed = extract_boxed(text)
    if boxed or fmt == "boxed":
      return boxed or None
  return text.strip() or None


# ----------------------------------------------------------------------------- normalisation

_MAX_NORMALIZE_CHARS = 2000
_DROP = ("\\displaystyle", "\\left.", "\\right.", "\\left", "\\right", "\\!", "\\,", "\\;",
         "\\:", "\\ ", "\\quad", "\\qquad", "~", "\\$", "$", "\\(", "\\)", "\\[", "\\]",
         "^{\\circ}", "^\\circ", "\\circ", "\u00b0", "\\%", "%")
_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mbox|hbox|boxed)"
    r"\s*\{")
_UNIT = re.compile(r"^\s*([-+]?[\d.,/]+)\s*([A-Za-z][A-Za-z.\s]*)$")
_NOT_UNITS = frozenset({"pi", "sqrt", "i", "e", "x", "y", "z", "n", "k"})
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?(?:=|\\in)")
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def _unwrap(text: str) -> str:
  """Replaces `\\text{X}` (and similar text/font commands, and `\\boxed{X}`) by X."""
  for _ in range(100):  # each pass removes one wrapper; answers hold a handful
    m = _WRAPPERS.search(text)
    if m is None:
      break
    open_at = m.end() - 1
    end = _closing_braces(text[open_at:]).get(0)
    if end is None:
      break
    end += open_at
    text = text[:m.start()] + text[open_at + 1:end] + text[end + 1:]
  return text


def _canonical_decimal(text: str) -> str:
  """"0.50" -> "0.5", "5.0" -> "5", ".5" -> "0.5", "007" -> "7", "-0" -> "0"."""
  negative = text.startswith("-")
  digits = text.lstrip("-")
  if "." in digits:
    digits = digits.rstrip("0").rstrip(".")
  whole, _, frac = digits.partition(".")
  whole = whole.lstrip("0") or "0"
  out = whole + ("." + frac if frac else "")
  return "-" + out if negative and out != "0" else out


def normalize_answer(text: str) -> str:
  """A canonical string form of a final answer, for exact comparison and majority votes.

  Choices (shared by the rewards' fallback checker):
    * math delimiters (`$`, `\\(`, `\\[`), `\\left` / `\\right`, spacing commands and all
      whitespace are removed; `\\dfrac` / `\\tfrac` become `\\frac`; `\\frac12` becomes
      `\\frac{1}{2}` and `\\sqrt2` becomes `\\sqrt{2}`;
    * `\\text{...}`, `\\mathrm{...}` and similar wrappers are replaced by their content;
    * degree signs and percent signs are dropped ("50\\%" -> "50"; the checker additionally
      accepts the value divided by 100);
    * a number followed only by words is a number with a unit: the words are dropped
      ("18 dollars" -> "18"), unless the word is a math name such as "pi";
    * thousands separators go ("1,234" -> "1234", "1{,}234" -> "1234"); "1, 234" stays a list;
    * a leading assignment goes ("x=5" -> "5", "x \\in [0,1]" -> "[0,1]"), also per element of
      a comma-separated list;
    * "(A)" becomes "A"; one trailing "." and braces around the whole answer are removed;
    * a plain decimal number is written canonically ("0.50" -> "0.5", "5.0" -> "5").

  Args:
    text: an extracted answer. Texts over 2000 characters are only stripped.

  Returns:
    The normalised string (may be empty).
  """
  text = text.strip()
  if len(text) > _MAX_NORMALIZE_CHARS:
    return text
  text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  text = text.replace("\\dbinom", "\\binom").replace("{,}", ",")
  for token in _DROP:
    text = text.replace(token, "")
  text = _unwrap(text)
  m = _UNIT.match(text)
  if m and m.group(2).strip().lower() not in _NOT_UNITS and len(m.group(2).strip()) > 1:
    text = m.group(1)
  text = _strip_thousands(text)
  text = "".join(text.split())
  text = text.rstrip(".")
  text = ",".join(_ASSIGNMENT.sub("", part, count=1) for part in split_top_level(text))
  text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
  text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
  text = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)
  text = re.sub(r"\\sqrt([0-9A-Za-z])", r"\\sqrt{\1}", text)
  while len(text) >= 2 and text[0] == "{" and _closing_braces(text).get(0) == len(text) - 1:
    text = text[1:-1]
  choice = re.fullmatch(r"\(([A-Ea-e])\)", text)
  if choice:
    text = choice.group(1)
  if _DECIMAL.fullmatch(text):
    text = _canonical_decimal(text)
  return text


def split_top_level(text: str) -> list[str]:
  """Splits at commas outside (), [], {} (escaped or not).

  Args:
    text: e.g. "(1,2),3".

  Returns:
    The parts, e.g. ["(1,2)", "3"]; [text] when there is no top-level comma.
  """
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth = max(depth - 1, 0)
    elif ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts
