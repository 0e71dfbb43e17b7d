"""Tokenizers behind one small interface.

Three backends share the `Tokenizer` protocol:
  * `CharTokenizer`: a fixed alphabet, one id per character (built-in tasks; tiny vocab),
    or all 256 bytes (`CharTokenizer.bytes()`), plus pad / bos / eos specials.
  * `SentencePieceTokenizer`: a sentencepiece `.model` file.
  * `HFTokenizer`: a Hugging Face `tokenizer.json` read with the `tokenizers` library.

`load_tokenizer(spec)` picks the backend from a path or a builtin name, and
`check_vocab(tokenizer, model_vocab_size)` rejects a tokenizer whose ids the model cannot embed.

All backends agree on two rules: `encode` never adds special tokens unless `add_bos=True`, and
`decode(..., skip_special=True)` drops exactly the pad / bos / eos ids (other special tokens, such
as chat-turn markers, are text that a chat template wrote and are kept).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
  """What the sampler, tasks and trainer need from a tokenizer."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def bos_id(self) -> int | None: ...

  @property
  def eos_id(self) -> int: ...

  def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...


_PAD, _BOS, _EOS = "<pad>", "<bos>", "<eos>"


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
  """One id per character of a fixed alphabet; ids 0, 1, 2 are pad, bos, eos.

  Attributes:
    alphabet: the characters, in id order starting at id 3. Must be unique.
    byte_level: when True the alphabet is ignored and text is encoded as UTF-8 bytes
      (ids 3..258), so any string round-trips.
  """

  alphabet: str = ""
  byte_level: bool = False

  def __post_init__(self):
    if not self.byte_level:
      if not self.alphabet:
        raise ValueError("CharTokenizer.alphabet must be non-empty (or use byte_level=True)")
      if len(set(self.alphabet)) != len(self.alphabet):
        raise ValueError(f"CharTokenizer.alphabet has repeated characters: {self.alphabet!r}")

  @classmethod
  def bytes(cls) -> "CharTokenizer":
    """The byte-level tokenizer: 256 byte ids after the three specials.

    Returns:
      A `CharTokenizer` with `byte_level=True`.
    """
    return cls(byte_level=True)

  @property
  def vocab_size(self) -> int:
    return 3 + (256 if self.byte_level else len(self.alphabet))

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def bos_id(self) -> int:
    return 1

  @property
  def eos_id(self) -> int:
    return 2

  @property
  def _index(self) -> dict[str, int]:
    return {c: i + 3 for i, c in enumerate(self.alphabet)}

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    if self.byte_level:
      ids = [b + 3 for b in text.encode("utf-8")]
    else:
      index = self._index
      ids = []
      for pos, ch in enumerate(text):
        if ch not in index:
          raise ValueError(
              f"CharTokenizer: character {ch!r} at position {pos} of {text!r} is not in the "
              f"alphabet {self.alphabet!r}")
        ids.append(index[ch])
    return ([self.bos_id] if add_bos else []) + ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    specials = {0: _PAD, 1: _BOS, 2: _EOS}
    if self.byte_level:
      out = bytearray()
      text = []
      for i in ids:
        i = int(i)
        if i in specials:
          if not skip_special:
            text.append(out.decode("utf-8", errors="replace"))
            out = bytearray()
            text.append(specials[i])
          continue
        if not 3 <= i < self.vocab_size:
          raise ValueError(f"CharTokenizer: id {i} outside vocabulary of size {self.vocab_size}")
        out.append(i - 3)
      text.append(out.decode("utf-8", errors="replace"))
      return "".join(text)
    chars = []
    for i in ids:
      i = int(i)
      if i in specials:
        if not skip_special:
          chars.append(specials[i])
        continue
      if not 3 <= i < self.vocab_size:
        raise ValueError(f"CharTokenizer: id {i} outside vocabulary of size {self.vocab_size}")
      chars.append(self.alphabet[i - 3])
    return "".join(chars)


def _as_ids(ids: Sequence[int], vocab_size: int, who: str) -> list[int]:
  """Converts ids (ints, numpy or JAX scalars) to Python ints and checks they are in range."""
  out = [int(i) for i in ids]
  for i in out:
    if not 0 <= i < vocab_size:
      raise ValueError(f"{who}: id {i} outside vocabulary of size {vocab_size}")
  return out


class SentencePieceTokenizer:
  """A sentencepiece `.model` file.

  Special ids come from the model's trainer settings. `bos_id` is None when the model was trained
  without one (`--bos_id=-1`). The model must define eos: generation stops on it. When the model
  defines no pad piece, `pad_id` is the eos id: padding sits after eos (or is masked out), so it is
  never read as text, and the id is always a valid row of the embedding.

  Attributes:
    path: the `.model` file.
  """

  def __init__(self, path: str | os.PathLike):
    """Loads the model.

    Args:
      path: a sentencepiece `.model` file.
    """
    import sentencepiece  # pylint: disable=g-import-not-at-top  (keep `import` cheap)

    self.path = os.fspath(path)
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_file=self.path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"SentencePieceTokenizer: cannot load {self.path!r}: {e}") from e
    eos = self._sp.eos_id()
    if eos < 0:
      raise ValueError(
          f"SentencePieceTokenizer: {self.path!r} defines no eos piece (trained with eos_id=-1); "
          "generation needs one")
    bos, pad = self._sp.bos_id(), self._sp.pad_id()
    self._eos = eos
    self._bos = bos if bos >= 0 else None
    self._pad = pad if pad >= 0 else eos
    self._specials = {i for i in (self._pad, self._bos, self._eos) if i is not None}

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Tokenizes text.

    Args:
      text: the string.
      add_bos: prepend bos (when the model has one).

    Returns:
      The ids.
    """
    ids = list(self._sp.encode(text, out_type=int))
    return ([self._bos] if add_bos and self._bos is not None else []) + ids

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Turns ids back into text.

    Args:
      ids: token ids, each in `[0, vocab_size)`.
      skip_special: drop pad / bos / eos; when False they appear as their piece strings.

    Returns:
      The text.
    """
    ids = _as_ids(ids, self.vocab_size, "SentencePieceTokenizer")
    if skip_special:
      return self._sp.decode([i for i in ids if i not in self._specials])
    # sentencepiece decodes control pieces to "", so specials are spliced in between runs.
    parts, run = [], []
    for i in ids:
      if i in self._specials:
        if run:
          parts.append(self._sp.decode(run))
          run = []
        parts.append(self._sp.id_to_piece(i))
      else:
        run.append(i)
    if run:
      parts.append(self._sp.decode(run))
    return "".join(parts)


_HF_FILE = "tokenizer.json"
_HF_CONFIG = "tokenizer_config.json"
_HF_SPECIAL_MAP = "special_tokens_map.json"
_HF_CHAT_TEMPLATE = "chat_template.jinja"
_SP_FILE = "tokenizer.model"


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"HFTokenizer: {path!r} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"HFTokenizer: {path!r} must hold a JSON object, got {type(data).__name__}")
  return data


def _token_content(value, path: str, field: str) -> str | None:
  """A special-token entry as transformers writes it: null, a string or {"content": ...}."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(
      f"HFTokenizer: field {field!r} of {path!r} must be a string, null or an object with a "
      f"'content' string; got {value!r}")


class HFTokenizer:
  """A Hugging Face `tokenizer.json`, read with the `tokenizers` library.

  The special tokens come from `tokenizer_config.json` beside the file (fields `bos_token`,
  `eos_token`, `pad_token`); a field the config lacks is taken from `special_tokens_map.json`
  when that exists; constructor arguments override both. bos may be absent (Qwen2 has none);
  eos is required; pad falls back to eos.

  Attributes:
    path: the `tokenizer.json` file.
    config: the parsed `tokenizer_config.json` ({} when there is none).
    chat_template: the Jinja chat template (from `chat_template.jinja`, else the config's
      `chat_template` field; for a list of named templates the one named "default"), or None.
    bos_token, eos_token, pad_token: the special-token strings (bos_token may be None).
    backend: the underlying `tokenizers.Tokenizer`.
  """

  def __init__(self, path: str | os.PathLike, *, bos_token: str | None = None,
               eos_token: str | None = None, pad_token: str | None = None):
    """Loads the tokenizer and resolves its special tokens.

    Args:
      path: a `tokenizer.json` file or a directory containing one.
      bos_token: overrides the configured bos token.
      eos_token: overrides the configured eos token (required when none is configured).
      pad_token: overrides the configured pad token.
    """
    import tokenizers  # pylint: disable=g-import-not-at-top  (keep `import` cheap)

    path = os.fspath(path)
    self.path = os.path.join(path, _HF_FILE) if os.path.isdir(path) else path
    try:
      self.backend = tokenizers.Tokenizer.from_file(self.path)
    except Exception as e:  # the Rust side raises plain Exception
      raise ValueError(f"HFTokenizer: cannot load {self.path!r} as a tokenizer.json: {e}") from e
    folder = os.path.dirname(os.path.abspath(self.path))
    config_path = os.path.join(folder, _HF_CONFIG)
    map_path = os.path.join(folder, _HF_SPECIAL_MAP)
    self.config = _read_json(config_path) if os.path.isfile(config_path) else {}
    special_map = _read_json(map_path) if os.path.isfile(map_path) else {}
    self.chat_template = self._chat_template(folder, config_path)

    def resolve(field: str, override: str | None) -> tuple[str | None, str]:
      if override is not None:
        return override, f"the {field}= argument"
      for source, data in ((config_path, self.config), (map_path, special_map)):
        if field in data:
          return _token_content(data[field], source, field), f"field {field!r} of {source!r}"
      return None, f"field {field!r} of {config_path!r}"

    self.bos_token, bos_src = resolve("bos_token", bos_token)
    self.eos_token, eos_src = resolve("eos_token", eos_token)
    self.pad_token, pad_src = resolve("pad_token", pad_token)
    if self.eos_token is None:
      where = config_path if os.path.isfile(config_path) else f"{config_path} (missing)"
      raise ValueError(
          f"HFTokenizer: no eos token configured for {self.path!r}: {where} has no non-null "
          "'eos_token' field (nor has special_tokens_map.json); pass eos_token=...")
    if self.pad_token is None:
      self.pad_token, pad_src = self.eos_token, eos_src
    self._bos = None if self.bos_token is None else self._token_id(self.bos_token, bos_src)
    self._eos = self._token_id(self.eos_token, eos_src)
    self._pad = self._token_id(self.pad_token, pad_src)
    self._specials = {i for i in (self._pad, self._bos, self._eos) if i is not None}
    # max id + 1 rather than a count, so gaps among added-token ids cannot hide an id.
    self._vocab_size = max(self.backend.get_vocab(with_added_tokens=True).values()) + 1

  def _token_id(self, token: str, source: str) -> int:
    i = self.backend.token_to_id(token)
    if i is None:
      raise ValueError(
          f"HFTokenizer: token {token!r} (from {source}) is not in the vocabulary of {self.path!r}")
    return i

  def _chat_template(self, folder: str, config_path: str) -> str | None:
    jinja = os.path.join(folder, _HF_CHAT_TEMPLATE)
    if os.path.isfile(jinja):  # transformers>=4.43 writes the template here and prefers it
      with open(jinja, encoding="utf-8") as f:
        return f.read()
    template = self.config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
      named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
      template = named.get("default")
    if template is not None and not isinstance(template, str):
      raise ValueError(
          f"HFTokenizer: field 'chat_template' of {config_path!r} must be a string or a list of "
          f"{{'name', 'template'}} objects; got {type(template).__name__}")
    return template

  def __repr__(self) -> str:
    return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def bos_id(self) -> int | None:
    return self._bos

  @property
  def eos_id(self) -> int:
    return self._eos

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Tokenizes text without the post-processor's special tokens.

    Args:
      text: the string. Special-token strings inside it (e.g. "<|im_end|>") become their ids,
        as in transformers.
      add_bos: prepend bos (when one is configured).

    Returns:
      The ids.
    """
    ids = self.backend.encode(text, add_special_tokens=False).ids
    return ([self._bos] if add_bos and self._bos is not None else []) + list(ids)

  def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
    """Turns ids back into text.

    Args:
      ids: token ids, each in `[0, vocab_size)`.
      skip_special: drop pad / bos / eos (other special tokens are kept).

    Returns:
      The text.
    """
    ids = _as_ids(ids, self.vocab_size, "HFTokenizer")
    if skip_special:
      ids = [i for i in ids if i not in self._specials]
    return self.backend.decode(ids, skip_special_tokens=False)


_ACCEPTED = (
    "accepted: 'bytes', 'chars:<alphabet>', a sentencepiece .model file, a Hugging Face "
    "tokenizer.json (or other .json) file, or a directory containing tokenizer.json or "
    "tokenizer.model")


def load_tokenizer(spec: str | os.PathLike, **kwargs) -> Tokenizer:
  """Builds a tokenizer from a builtin name or a path.

  A directory holding both tokenizer.json and tokenizer.model loads the tokenizer.json, whose
  config names the special tokens the model was trained with.

  Args:
    spec: "bytes", "chars:<alphabet>", a `.model` file, a `tokenizer.json` file, or a directory
      containing `tokenizer.json` or `tokenizer.model`.
    **kwargs: passed to the backend's constructor (e.g. `eos_token=` for `HFTokenizer`).

  Returns:
    The tokenizer.

  Raises:
    ValueError: naming the spec and what is accepted, when it matches none of the above.
  """
  if isinstance(spec, str) and (spec == "bytes" or spec.startswith("chars:")):
    if kwargs:
      raise ValueError(f"load_tokenizer: {spec!r} takes no options, got {sorted(kwargs)}")
    if spec == "bytes":
      return CharTokenizer.bytes()
    return CharTokenizer(alphabet=spec[len("chars:"):])
  path = os.path.expanduser(os.fspath(spec))
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, _HF_FILE)):
      return HFTokenizer(path, **kwargs)
    if os.path.isfile(os.path.join(path, _SP_FILE)):
      return SentencePieceTokenizer(os.path.join(path, _SP_FILE), **kwargs)
    raise ValueError(
        f"load_tokenizer: directory {path!r} contains neither {_HF_FILE} nor {_SP_FILE}; "
        f"{_ACCEPTED}")
  if not os.path.exists(path):
    raise ValueError(f"load_tokenizer: {path!r} is not a builtin name and does not exist; "
                     f"{_ACCEPTED}")
  if path.endswith(".model"):
    return SentencePieceTokenizer(path, **kwargs)
  if path.endswith(".json"):
    return HFTokenizer(path, **kwargs)
  raise ValueError(f"load_tokenizer: unknown tokenizer file type {path!r}; {_ACCEPTED}")


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, where: str = "") -> None:
  """Checks that every id the tokenizer can produce is a row of the model's embedding.

  A model vocabulary larger than the tokenizer's is fine (checkpoints pad it to a multiple of
  64 or 128); a smaller one means the tokenizer and the model do not belong together.

  Args:
    tokenizer: the tokenizer.
    model_vocab_size: the model's vocabulary (embedding rows).
    where: context for the message, e.g. the checkpoint path.

  Raises:
    ValueError: with both sizes, when the tokenizer's vocabulary exceeds the model's.
  """
  prefix = f"{where}: " if where else ""
  if model_vocab_size <= 0:
    raise ValueError(f"{prefix}check_vocab: model_vocab_size must be > 0, got {model_vocab_size}")
  n = tokenizer.vocab_size
  if n > model_vocab_size:
    raise ValueError(
        f"{prefix}vocab mismatch: tokenizer vocab_size {n} > model vocab_size {model_vocab_size} "
        f"(the tokenizer can produce ids up to {n - 1}); load the tokenizer that belongs to the "
        "model")
