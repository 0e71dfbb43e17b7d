"""A tiny word-level HF tokenizer with a chat template, and math JSONL files, written by tests."""

from __future__ import annotations

import json
import os

QWEN_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

_WORDS = ("what is plus minus times the answer please reason step by and put your final within "
          "boxed question solve x = + - * / ( ) { } \\ . , ? ! : ; 0 1 2 3 4 5 6 7 8 9 "
          "system user assistant").split()


def write_tokenizer(path: str) -> str:
  """A whitespace/punctuation WordLevel tokenizer.json + tokenizer_config.json in `path`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders  # pylint: disable=import-outside-toplevel
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
  vocab = {tok: i for i, tok in enumerate(specials + sorted(set(_WORDS)))}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(True)])
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.add_special_tokens(specials)
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
               "chat_template": QWEN_TEMPLATE}, f)
  return path


def write_math_jsonl(path: str, n: int, seed: int = 0) -> str:
  """GSM8K-style rows: {"question": "what is a plus b ?", "answer": "... #### c"}."""
  import random  # pylint: disable=import-outside-toplevel
  rng = random.Random(seed)
  with open(path, "w") as f:
    for _ in range(n):
      a, b = rng.randint(0, 9), rng.randint(0, 9)
      f.write(json.dumps({"question": f"what is {a} plus {b} ?",
                          "answer": f"{a} + {b} = {a + b} #### {a + b}"}) + "\n")
  return path
