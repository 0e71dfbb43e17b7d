"""Chat prompts: Hugging Face chat templates rendered without transformers.

`render_chat(template, messages)` renders a tokenizer's Jinja `chat_template` exactly as
`transformers`' `apply_chat_template(..., tokenize=False)` does: the same sandboxed, immutable
Jinja environment (`trim_blocks`, `lstrip_blocks`, the `loopcontrols` extension and a
`{% generation %}` block that renders its body), the same globals (`raise_exception`,
`strftime_now`, a `dict` constructor, an underscore-safe `namespace`) and the same `tojson` filter
(no HTML escaping, `ensure_ascii=False`). Like transformers, message keys whose value is None are
dropped and special tokens whose value is None are left undefined (they render as "").

Without a template (`template=None`, e.g. a base model's tokenizer) the plain fallback joins the
messages' contents with a blank line and, with `add_generation_prompt`, ends with a newline:
`[system "S", user "Q"]` -> "S\\n\\nQ\\n". Roles are not written.

`ChatFormat` turns a dataset question into the prompt text the sampler tokenizes. A rendered
template usually contains the bos token already (Llama 3 writes `<|begin_of_text|>`), so encode
the prompt with `add_bos=False`.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from typing import Any

_DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_SPECIAL_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                         "cls_token", "mask_token")


@functools.lru_cache(maxsize=16)
def _compile(template: str):
  """Compiles a template in an environment configured like transformers' (cached)."""
  import jinja2  # pylint: disable=g-import-not-at-top  (keep `import adaptive_rl` cheap)
  from jinja2 import ext, nodes  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
  if version < (3, 1, 6):  # older sandboxes have known escapes; templates are untrusted code
    raise ImportError(f"chat templates need jinja2>=3.1.6, found {jinja2.__version__}")

  class GenerationBlock(ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text; here it renders as is."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  def strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)

  class TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the dict type itself."""

    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  class TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed attributes (no route to internals)."""

    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument  (Namespace's trick)
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for name in attrs:
        TemplateNamespace.check_name(name)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
      TemplateNamespace.check_name(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check_name(name):
      if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(
            f"chat templates cannot store underscore-prefixed attributes, got {name!r}")

  env = ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  env.globals["dict"] = TemplateDict()
  env.globals["namespace"] = TemplateNamespace
  return env.from_string(template)


def _plain(value: Any) -> Any:
  """A copy made of plain JSON types only, as transformers hands to templates."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, dict):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if hasattr(value, "item") and callable(value.item):  # numpy / JAX scalars
    return _plain(value.item())
  return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict) -> dict:
  """Copies a reasoning trace to both names templates read, as transformers does."""
  reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
  if reasoning is None:
    return message
  return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _plain_fallback(messages: list[dict], add_generation_prompt: bool) -> str:
  text = "\n\n".join(str(m.get("content") or "") for m in messages)
  return text + "\n" if add_generation_prompt else text


def render_chat(template: str | None, messages: list[dict], *, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None, **extra) -> str:
  """Renders a conversation with a Hugging Face chat template (or the plain fallback).

  Args:
    template: the Jinja `chat_template` (e.g. `HFTokenizer.chat_template`), or None for the plain
      fallback described in the module docstring.
    messages: dicts with "role" and "content" (and whatever else the template reads).
    add_generation_prompt: end with the header that opens the assistant's turn.
    bos_token: the tokenizer's bos string; None leaves `bos_token` undefined (renders as "").
    eos_token: the tokenizer's eos string; None leaves it undefined.
    **extra: further template variables (`pad_token`, `tools`, `enable_thinking`, ...). None
      values of the special-token fields are left undefined, as transformers does.

  Returns:
    The prompt text.

  Raises:
    ValueError: when `messages` is empty or holds a non-dict.
    jinja2.TemplateError: when the template calls `raise_exception` (e.g. roles out of order)
      or does not parse.
  """
  if not messages:
    raise ValueError("render_chat: messages must be a non-empty list of dicts")
  for i, m in enumerate(messages):
    if not isinstance(m, dict):
      raise ValueError(f"render_chat: messages[{i}] must be a dict, got {type(m).__name__}")
  # transformers drops None-valued keys: templates test `message.content is defined`.
  chat = [_alias_reasoning(_plain({k: v for k, v in m.items() if v is not None}))
          for m in messages]
  if template is None:
    return _plain_fallback(chat, add_generation_prompt)
  variables = {"bos_token": bos_token, "eos_token": eos_token, **extra}
  variables = {k: v for k, v in variables.items()
               if not (k in _SPECIAL_TOKEN_FIELDS and v is None)}
  variables.setdefault("tools", None)
  variables.setdefault("documents", None)
  return _compile(template).render(messages=chat, add_generation_prompt=add_generation_prompt,
                                   **_plain(variables))


def _special_tokens(tokenizer) -> dict[str, str]:
  """The special-token strings a template may read, from an `HFTokenizer`-like object.

  bos and eos come from the tokenizer's resolved attributes; the rest only from its
  `tokenizer_config.json` (an `HFTokenizer`'s pad falls back to eos, which transformers'
  `pad_token` would not).
  """
  out = {}
  config = getattr(tokenizer, "config", None) or {}
  for field in _SPECIAL_TOKEN_FIELDS:
    if field in ("bos_token", "eos_token"):
      value = getattr(tokenizer, field, None)
    else:
      value = config.get(field)
      if isinstance(value, dict):  # an AddedToken entry
        value = value.get("content")
    if isinstance(value, str):
      out[field] = value
  return out


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """How a dataset question becomes a prompt.

  The user message is the question, then a newline and `instruction` (when non-empty). A system
  message is added when `system_prompt` is non-empty. With `use_template` the tokenizer's chat
  template renders the conversation, ending with the assistant header; without it the plain
  fallback of `render_chat` is used (for base models: "system\\n\\nquestion\\ninstruction\\n").

  Attributes:
    system_prompt: the system message; "" for none (the template may still add its default).
    instruction: appended to every question.
    use_template: render with the tokenizer's `chat_template`; a tokenizer without one is then
      an error, so base models must set False.
  """

  system_prompt: str = ""
  instruction: str = _DEFAULT_INSTRUCTION
  use_template: bool = True

  def __post_init__(self):
    for field in ("system_prompt", "instruction"):
      if not isinstance(getattr(self, field), str):
        raise ValueError(
            f"ChatFormat.{field} must be a string, got {type(getattr(self, field)).__name__}")
    if not isinstance(self.use_template, bool):
      raise ValueError(f"ChatFormat.use_template must be a bool, got {self.use_template!r}")

  def messages(self, question: str) -> list[dict]:
    """The conversation for one question.

    Args:
      question: the problem text.

    Returns:
      [system?, user] message dicts.
    """
    content = question + ("\n" + self.instruction if self.instruction else "")
    system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    return system + [{"role": "user", "content": content}]

  def format_prompt(self, tokenizer, question: str) -> str:
    """The prompt text for one question.

    Args:
      tokenizer: any tokenizer; its `chat_template` and special-token strings are read when
        `use_template` is set (an `HFTokenizer` has them).
      question: the problem text.

    Returns:
      The prompt, to be encoded without an extra bos.

    Raises:
      ValueError: `use_template` is set but the tokenizer has no chat template.
    """
    template = None
    if self.use_template:
      template = getattr(tokenizer, "chat_template", None)
      if template is None:
        raise ValueError(
            f"ChatFormat.use_template is True but tokenizer {tokenizer!r} has no chat_template; "
            "set use_template=False for a base model (plain prompt)")
    return render_chat(template, self.messages(question), add_generation_prompt=True,
                       **_special_tokens(tokenizer))
