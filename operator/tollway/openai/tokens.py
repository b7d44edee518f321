"""Token counts from the model's own tokenizer (its repository's tokenizer.json), for a model that does not
report them: what the client is billed is counted the way the model counts, never guessed from characters."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from tollway.openai.protocol import Usage


class TokenCounter:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path) -> TokenCounter | None:
        """The counter of the tokenizer.json at `path`; None when there is none."""
        return cls(Tokenizer.from_file(str(path))) if path.is_file() else None

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def usage(self, prompt: str, completion: str) -> Usage:
        return Usage(self.count(prompt), self.count(completion))
