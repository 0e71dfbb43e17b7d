"""Tests for adaptive_rl.tasks.tokenizers, on real sentencepiece and tokenizer.json files."""

from __future__ import annotations

import json
import os
import random
import shutil

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from adaptive_rl.tasks import tokenizers as tk

_WORDS = ("the cat sat on a mat while seven dogs ran past quickly and one bird sang "
          "loudly over green hills near the river bank").split()
_SENTENCES = ["the cat sat on a mat", "seven dogs ran past quickly", "one bird sang loudly",
              "green hills near the river bank", "a cat and a dog"]


def _corpus(n: int = 400) -> list[str]:
  rng = random.Random(0)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


# ---------------------------------------------------------------------------- sentencepiece


def _train_sp(folder, name: str, **ids) -> str:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  corpus = folder / "corpus.txt"
  corpus.write_text("\n".join(_corpus()) + "\n", encoding="utf-8")
  prefix = str(folder / name)
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=prefix, vocab_size=80, model_type="bpe",
      character_coverage=1.0, normalization_rule_name="identity", minloglevel=2, **ids)
  return prefix + ".model"


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  # Gemma-like layout: pad 0, eos 1, bos 2, unk 3, so no id coincides with a default.
  return _train_sp(tmp_path_factory.mktemp("sp"), "full", pad_id=0, eos_id=1, bos_id=2, unk_id=3)


def test_sentencepiece_special_ids_and_round_trip(sp_path):
  tok = tk.SentencePieceTokenizer(sp_path)
  assert isinstance(tok, tk.Tokenizer)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 80)
  for text in _SENTENCES:
    ids = tok.encode(text)
    assert ids and all(3 < i < 80 for i in ids)  # no specials added implicitly
    assert tok.encode(text, add_bos=True) == [2] + ids
    assert tok.decode(ids) == text
    # Specials vanish when skipped, numpy ids are accepted, and show as pieces when not skipped.
    padded = np.array([2] + ids + [1, 0, 0], np.int32)
    assert tok.decode(padded) == text
    assert tok.decode(padded, skip_special=False) == "<s>" + text + "</s><pad><pad>"


def test_sentencepiece_without_pad_or_bos(tmp_path):
  path = _train_sp(tmp_path, "nopad", pad_id=-1, bos_id=-1, unk_id=0, eos_id=1)
  tok = tk.SentencePieceTokenizer(path)
  assert tok.bos_id is None and tok.eos_id == 1
  assert tok.pad_id == tok.eos_id  # documented fallback: a valid id that never reads as text
  assert tok.encode("the cat", add_bos=True) == tok.encode("the cat")
  assert tok.decode(tok.encode("the cat") + [1, 1]) == "the cat"


def test_sentencepiece_errors(tmp_path, sp_path):
  with pytest.raises(ValueError, match="defines no eos"):
    tk.SentencePieceTokenizer(_train_sp(tmp_path, "noeos", eos_id=-1, pad_id=-1))
  with pytest.raises(ValueError, match="id 80 outside vocabulary of size 80"):
    tk.SentencePieceTokenizer(sp_path).decode([5, 80])
  bad = tmp_path / "junk.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model"):
    tk.SentencePieceTokenizer(bad)


# ---------------------------------------------------------------------------- tokenizer.json

_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                  "<|im_end|>\n{% endfor %}")


def _build_hf_json(path) -> None:
  """A byte-level BPE like Qwen2's, whose post-processor would add <s> if asked to."""
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(_corpus(), trainer)
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  tok.add_tokens(["<extra_0>"])  # an added, non-special token: counts towards vocab_size
  tok.save(str(path))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """Qwen2-instruct-style folder: no bos, eos as an AddedToken dict, pad a string, a template."""
  folder = tmp_path_factory.mktemp("hf")
  _build_hf_json(folder / "tokenizer.json")
  config = {
      "bos_token": None,
      "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False,
                    "normalized": False, "rstrip": False, "single_word": False},
      "pad_token": "<|endoftext|>",
      "chat_template": _CHAT_TEMPLATE,
      "model_max_length": 32768,
  }
  (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  return folder


@pytest.fixture(scope="module")
def hf_tok(hf_dir):
  return tk.HFTokenizer(hf_dir)


_HF_TEXTS = ["the cat sat on a mat", "  Leading spaces and CAPS!", "wörld ünïcode 🙂 naïve",
             "<|im_start|>user\nhi<|im_end|>\n", "tabs\tand\nnewlines", ""]


def test_hf_directory_and_file_load_the_same(hf_dir):
  by_dir = tk.HFTokenizer(hf_dir)
  by_file = tk.load_tokenizer(str(hf_dir / "tokenizer.json"))
  assert isinstance(by_file, tk.HFTokenizer) and isinstance(by_dir, tk.Tokenizer)
  v = by_dir.backend.get_vocab()
  for tok in (by_dir, by_file):
    assert tok.bos_id is None and tok.bos_token is None
    assert (tok.eos_token, tok.eos_id) == ("<|im_end|>", v["<|im_end|>"])
    assert (tok.pad_token, tok.pad_id) == ("<|endoftext|>", v["<|endoftext|>"])
    assert tok.chat_template == _CHAT_TEMPLATE
    assert tok.config["model_max_length"] == 32768
    # Full size, added tokens included: <extra_0> is the last id.
    assert tok.vocab_size == by_dir.backend.get_vocab_size(with_added_tokens=True)
    assert tok.vocab_size == v["<extra_0>"] + 1
  for text in _HF_TEXTS:
    assert by_dir.encode(text) == by_file.encode(text)


def test_hf_matches_transformers_and_round_trips(hf_dir):
  import transformers  # pylint: disable=g-import-not-at-top
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
  tok = tk.HFTokenizer(hf_dir)
  assert tok.vocab_size == len(ref)
  for text in _HF_TEXTS:
    ids = tok.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False), text
    assert tok.decode(ids, skip_special=False) == text
    assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == text.replace("<|im_end|>", "")
    # add_bos with no bos configured adds nothing (the post-processor's <s> is never used).
    assert tok.encode(text, add_bos=True) == ids
  # Chat markers other than eos/pad are kept by skip_special; eos is dropped unless asked for.
  ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
  assert tok.decode(ids) == "<|im_start|>user\nhi"
  assert tok.decode(ids, skip_special=False) == "<|im_start|>user\nhi<|im_end|>"


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(text=st.text(max_size=40))
def test_hf_byte_level_round_trips_any_text(hf_tok, text):
  hypothesis.assume("<|" not in text and "<s>" not in text and "<extra_0>" not in text)
  assert hf_tok.decode(hf_tok.encode(text)) == text


def test_hf_special_tokens_map_bos_and_pad_fallback(tmp_path, hf_dir):
  """Llama-style folder: specials only in special_tokens_map.json, bos defined, no pad."""
  shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  (tmp_path / "special_tokens_map.json").write_text(json.dumps(
      {"bos_token": {"content": "<s>"}, "eos_token": "<|endoftext|>"}), encoding="utf-8")
  (tmp_path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
  tok = tk.load_tokenizer(str(tmp_path))
  bos, eos = tok.backend.token_to_id("<s>"), tok.backend.token_to_id("<|endoftext|>")
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (bos, eos, eos)
  assert tok.config == {} and tok.chat_template == "{{ messages }}"
  ids = tok.encode("the cat")
  assert bos not in ids and tok.encode("the cat", add_bos=True) == [bos] + ids
  assert tok.decode([bos] + ids + [eos, eos]) == "the cat"
  assert tok.decode([bos] + ids + [eos], skip_special=False) == "<s>the cat<|endoftext|>"


def test_hf_missing_eos_names_file_and_field(tmp_path, hf_dir):
  shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  with pytest.raises(ValueError, match=r"tokenizer_config\.json.*'eos_token'") as e:
    tk.HFTokenizer(tmp_path)
  assert str(tmp_path) in str(e.value)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": None}))
  with pytest.raises(ValueError, match="eos_token"):
    tk.load_tokenizer(str(tmp_path))
  tok = tk.load_tokenizer(str(tmp_path), eos_token="<|im_end|>")
  assert tok.eos_id == tok.pad_id == tok.backend.token_to_id("<|im_end|>")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
  with pytest.raises(ValueError, match=r"'<nope>'.*eos_token.*not in the vocabulary"):
    tk.HFTokenizer(tmp_path)
  with pytest.raises(ValueError, match="outside vocabulary"):
    tok.decode([tok.vocab_size])


# ---------------------------------------------------------------------------- CharTokenizer

_ALPHABET = "0123456789+-=* abc"


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(text=st.text(alphabet=_ALPHABET, max_size=30))
def test_char_round_trip(text):
  tok = tk.CharTokenizer(_ALPHABET)
  ids = tok.encode(text, add_bos=True)
  assert ids[0] == tok.bos_id and all(3 <= i < tok.vocab_size for i in ids[1:])
  assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == text
  assert tok.decode(ids + [tok.eos_id], skip_special=False) == "<bos>" + text + "<eos>"


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(text=st.text(max_size=30))
def test_bytes_round_trip_any_unicode(text):
  tok = tk.load_tokenizer("bytes")
  ids = tok.encode(text)
  assert len(ids) == len(text.encode("utf-8")) and tok.vocab_size == 259
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text


def test_char_errors():
  tok = tk.load_tokenizer("chars:ab")
  assert tok == tk.CharTokenizer("ab") and tok.vocab_size == 5
  with pytest.raises(ValueError, match=r"'c' at position 2 of 'abc'"):
    tok.encode("abc")
  with pytest.raises(ValueError, match="id 5 outside vocabulary of size 5"):
    tok.decode([3, 5])
  with pytest.raises(ValueError, match="id 300 outside vocabulary of size 259"):
    tk.CharTokenizer.bytes().decode([300])
  with pytest.raises(ValueError, match="repeated"):
    tk.CharTokenizer("aba")
  with pytest.raises(ValueError, match="non-empty"):
    tk.load_tokenizer("chars:")


# ---------------------------------------------------------------------------- load_tokenizer


def test_load_tokenizer_dispatch(tmp_path, sp_path, hf_dir):
  assert isinstance(tk.load_tokenizer(sp_path), tk.SentencePieceTokenizer)
  sp_dir = tmp_path / "sp_dir"
  sp_dir.mkdir()
  shutil.copy(sp_path, sp_dir / "tokenizer.model")
  tok = tk.load_tokenizer(str(sp_dir))
  assert isinstance(tok, tk.SentencePieceTokenizer) and tok.eos_id == 1
  # Both files present: tokenizer.json wins (its config names the specials).
  shutil.copy(sp_path, hf_dir / "tokenizer.model")
  try:
    assert isinstance(tk.load_tokenizer(hf_dir), tk.HFTokenizer)
  finally:
    os.remove(hf_dir / "tokenizer.model")


def test_load_tokenizer_rejects_with_path_and_accepted_list(tmp_path):
  unknown = tmp_path / "vocab.txt"
  unknown.write_text("a\nb\n")
  cases = {str(unknown): "unknown tokenizer file type",
           str(tmp_path / "missing.model"): "does not exist",
           str(tmp_path): "contains neither tokenizer.json nor tokenizer.model"}
  for spec, why in cases.items():
    with pytest.raises(ValueError) as e:
      tk.load_tokenizer(spec)
    msg = str(e.value)
    assert spec in msg and why in msg and "chars:<alphabet>" in msg and ".model" in msg, msg


def test_check_vocab(sp_path):
  tok = tk.SentencePieceTokenizer(sp_path)
  tk.check_vocab(tok, 80)
  tk.check_vocab(tok, 128)  # padded model vocab is fine
  with pytest.raises(ValueError) as e:
    tk.check_vocab(tok, 64, where="ckpt/qwen")
  msg = str(e.value)
  assert msg.startswith("ckpt/qwen: ") and "80" in msg and "64" in msg and "mismatch" in msg
  with pytest.raises(ValueError, match="model_vocab_size must be > 0"):
    tk.check_vocab(tk.CharTokenizer.bytes(), 0)
