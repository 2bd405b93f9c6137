"""Whisper's tokenizer, read from a CTranslate2 / faster-whisper directory: `tokenizer.json`
(byte-level BPE, through the `tokenizers` package) and `config.json` (suppress_ids,
suppress_ids_begin, lang_ids, as ctranslate2's converter writes them).

A transcription's decoder prompt is <|startoftranscript|><|lang|><|transcribe|> (or
<|translate|>: speech in any language -> English text) <|notimestamps|>; the text tokens
follow, then <|endoftext|>. Token ids from <|endoftext|> up (special tokens, and the timestamp
tokens the model's vocabulary adds after tokenizer.json's last id) are never text: `decode`
drops them. `suppressed` / `suppressed_at_begin` are the ids ctranslate2's
`Whisper.generate` disables by default (suppress_tokens=[-1] -> config's suppress_ids, at
every step; suppress_blank=True -> suppress_ids_begin, at the first generated step only).
"""

from __future__ import annotations

import json
import os
import re

TASKS = ("transcribe", "translate")
_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw|yue)\|>$")


class WhisperTokenizer:
    """Text <-> token ids, special ids and decoder prompts of one Whisper model directory."""

    def __init__(self, model_dir: str):
        from tokenizers import Tokenizer    # optional dependency, needed only here

        self.model_dir = str(model_dir)
        path = os.path.join(self.model_dir, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Whisper tokenizer not found: {path}")
        self.tokenizer = Tokenizer.from_file(path)
        config_path = os.path.join(self.model_dir, "config.json")
        config = {}
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = json.load(f)
        self.config = config
        self.eot = self.special("<|endoftext|>")
        self.sot = self.special("<|startoftranscript|>")
        self.transcribe = self.special("<|transcribe|>")
        self.translate = self.special("<|translate|>")
        self.no_timestamps = self.special("<|notimestamps|>")
        added = self.tokenizer.get_added_tokens_decoder()
        self.languages = {m.group(1): i for i, t in sorted(added.items())
                          if self.sot < i < self.translate and (m := _LANGUAGE_TOKEN.match(t.content))}
        if config.get("lang_ids") and sorted(config["lang_ids"]) != sorted(self.languages.values()):
            raise ValueError(f"{config_path}: lang_ids do not match the language tokens of {path}")

    def special(self, token: str) -> int:
        """Id of a special token such as '<|notimestamps|>'."""
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise KeyError(f"{self.model_dir}/tokenizer.json has no token {token!r}")
        return i

    def language(self, code: str) -> int:
        """Id of the language token <|code|> ('en', 'fr', ...)."""
        if code not in self.languages:
            raise ValueError(f"unknown Whisper language {code!r}; known: {', '.join(sorted(self.languages))}")
        return self.languages[code]

    def prompt(self, language: str, task: str = "transcribe") -> list[int]:
        """[<|startoftranscript|>, <|language|>, <|task|>, <|notimestamps|>]."""
        if task not in TASKS:
            raise ValueError(f"Whisper task must be one of {TASKS}, got {task!r}")
        return [self.sot, self.language(language), getattr(self, task), self.no_timestamps]

    def encode(self, text: str) -> list[int]:
        """Text token ids (no special tokens), as faster-whisper encodes text."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Text of the ids below <|endoftext|> (special and timestamp tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids if int(i) < self.eot])

    @property
    def suppressed(self) -> list[int]:
        """Ids disabled at every step (config.json suppress_ids; empty without a config)."""
        return [int(i) for i in self.config.get("suppress_ids", [])]

    @property
    def suppressed_at_begin(self) -> list[int]:
        """Ids disabled at the first generated step (config.json suppress_ids_begin)."""
        return [int(i) for i in self.config.get("suppress_ids_begin", [])]
