"""Tests for adaptive_rl.tasks.chat: templates render exactly as transformers renders them."""

from __future__ import annotations

import json

import jinja2
import pytest

from adaptive_rl.tasks import chat
from adaptive_rl.tasks import tokenizers as tk

# Qwen2.5-Instruct's template (tools branch included), verbatim in structure.
_QWEN = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama-3-Instruct's template (bos written by the template, contents trimmed).
_LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
           "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content']"
           " | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
           "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
           "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Llama-3.2-style: namespace, strftime_now, raise_exception, dict, loop controls, generation.
_LLAMA32 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- set ns = namespace(system="", turns=0) %}
{%- if messages[0]['role'] == 'system' %}
    {%- set ns.system = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- ns.system + "<|eot_id|>" }}
{%- set meta = dict(source="test", n=messages|length) %}
{%- for message in messages %}
    {%- if message.role not in ["user", "assistant"] %}
        {{- raise_exception("roles must be user/assistant, got " + message.role) }}
    {%- endif %}
    {%- if message.role == "assistant" %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if ns.turns > 8 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
{{- '' if meta.n else (meta | tojson) }}
"""

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi ünïcode 🙂"}],
    [{"role": "system", "content": "Be precise."},
     {"role": "user", "content": "  Solve x^2 = 4.  "},
     {"role": "assistant", "content": "x = \\pm 2"},
     {"role": "user", "content": "And x^2 = 9?\n\"quoted\" <b>html</b> & more"}],
    [{"role": "user", "content": "First"}, {"role": "assistant", "content": "Second"},
     {"role": "user", "content": "Third", "name": None}],
]


def _write_tokenizer(folder, template: str, bos: str | None, eos: str) -> None:
  """A tiny word-level tokenizer.json with the chat specials, plus its tokenizer_config.json."""
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate("the a cat hi what is".split())}}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(_SPECIALS)
  tok.save(str(folder / "tokenizer.json"))
  config = {"bos_token": bos, "eos_token": eos, "chat_template": template,
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096}
  (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="module", params=["qwen", "llama3", "llama32"])
def tokenizer_dir(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  template, bos, eos = {
      "qwen": (_QWEN, None, "<|im_end|>"),
      "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
      "llama32": (_LLAMA32, "<|begin_of_text|>", "<|eot_id|>"),
  }[request.param]
  _write_tokenizer(folder, template, bos, eos)
  return folder


@pytest.mark.parametrize("conversation", range(len(_CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_render_matches_transformers(tokenizer_dir, conversation, generation_prompt):
  import transformers  # pylint: disable=g-import-not-at-top
  ref = transformers.PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
  tok = tk.HFTokenizer(tokenizer_dir)
  messages = _CONVERSATIONS[conversation]
  expected = ref.apply_chat_template(messages, tokenize=False,
                                     add_generation_prompt=generation_prompt)
  got = chat.render_chat(tok.chat_template, messages, add_generation_prompt=generation_prompt,
                         bos_token=tok.bos_token, eos_token=tok.eos_token)
  assert got == expected
  # The special-token strings it contains encode as single ids, as transformers' do.
  assert tok.encode(got) == ref.encode(expected, add_special_tokens=False)


def test_tools_and_extra_variables_match_transformers(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top
  _write_tokenizer(tmp_path, _QWEN, None, "<|im_end|>")
  ref = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
  tools = [{"type": "function", "function": {"name": "add", "description": "adds <a> & b",
                                             "parameters": {"type": "object", "properties": {}}}}]
  messages = [{"role": "user", "content": "add 1 and 2"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"function": {"name": "add", "arguments": {"a": 1, "b": "é"}}}]}]
  expected = ref.apply_chat_template(messages, tools=tools, tokenize=False,
                                     add_generation_prompt=True)
  got = chat.render_chat(_QWEN, messages, tools=tools, eos_token="<|im_end|>")
  assert got == expected and '"b": "é"' in got and "<a> & b" in got


def test_date_variable_and_raise_exception(tmp_path):
  messages = [{"role": "user", "content": "hi"}]
  out = chat.render_chat(_LLAMA32, messages, bos_token="<B>", date_string="01 Jan 2030")
  assert out.startswith("<B><|start_header_id|>system") and "Today Date: 01 Jan 2030" in out
  with pytest.raises(jinja2.TemplateError, match="roles must be user/assistant, got tool"):
    chat.render_chat(_LLAMA32, [{"role": "tool", "content": "x"}])


def test_sandbox_blocks_escapes():
  evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
  with pytest.raises(jinja2.exceptions.SecurityError):
    chat.render_chat(evil, [{"role": "user", "content": "x"}])
  with pytest.raises(jinja2.exceptions.SecurityError):
    chat.render_chat("{% set ns = namespace(_x=1) %}", [{"role": "user", "content": "x"}])
  with pytest.raises(jinja2.exceptions.SecurityError):  # immutable: no in-place mutation
    chat.render_chat("{{ messages.append(1) }}", [{"role": "user", "content": "x"}])


def test_plain_fallback_and_errors():
  messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
  assert chat.render_chat(None, messages) == "S\n\nQ\n"
  assert chat.render_chat(None, messages, add_generation_prompt=False) == "S\n\nQ"
  with pytest.raises(ValueError, match="non-empty"):
    chat.render_chat(None, [])
  with pytest.raises(ValueError, match=r"messages\[1\] must be a dict"):
    chat.render_chat(None, [{"role": "user", "content": "x"}, "oops"])


def test_chat_format(tmp_path):
  _write_tokenizer(tmp_path, _QWEN, None, "<|im_end|>")
  tok = tk.HFTokenizer(tmp_path)
  fmt = chat.ChatFormat(system_prompt="Be brief.")
  prompt = fmt.format_prompt(tok, "What is 1+1?")
  assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?\n"
                    "Please reason step by step, and put your final answer within \\boxed{}."
                    "<|im_end|>\n<|im_start|>assistant\n")
  plain = chat.ChatFormat(instruction="", use_template=False)
  assert plain.format_prompt(tok, "Q?") == "Q?\n"
  assert chat.ChatFormat(system_prompt="S", instruction="I", use_template=False).format_prompt(
      tk.CharTokenizer.bytes(), "Q") == "S\n\nQ\nI\n"
  with pytest.raises(ValueError, match="has no chat_template; set use_template=False"):
    chat.ChatFormat().format_prompt(tk.CharTokenizer.bytes(), "Q")
  with pytest.raises(ValueError, match="ChatFormat.use_template must be a bool"):
    chat.ChatFormat(use_template="yes")
  with pytest.raises(ValueError, match="ChatFormat.instruction must be a string"):
    chat.ChatFormat(instruction=None)
