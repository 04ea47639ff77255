"""Token ids as lm-evaluation-harness 0.4.13 builds them for the HF backend: the work items of
scoring (`_Pair`, `_Row`), context/continuation encoding (`TemplateLM._encode_pair`), prompts
for generation (`tok_batch_encode`, per prompt) with the chat template, and the stop tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalcore.errors import BackendError


@dataclass(frozen=True)
class _Pair:
    """One (context, continuation) to score, as token ids; `key` indexes the result."""

    key: tuple[int, int]
    ctx: tuple[int, ...]
    cont: tuple[int, ...]
    merged: bool            # encode(context + continuation) does not start with encode(context)


@dataclass(frozen=True)
class _Row:
    """A packed row: one context followed by several continuations (each without its last token)."""

    ctx: tuple[int, ...]
    pairs: tuple[_Pair, ...]

    @property
    def length(self) -> int:
        return len(self.ctx) + sum(len(p.cont) - 1 for p in self.pairs)



class Tokens:
    """HFBackend's tokenization (mixed into `HFBackend`: reads `tokenizer`, `model`, `settings`)."""

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: BOS, else EOS (lm-eval's prefix_token_id)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """lm-eval's HFLM.tok_encode: the tokenizer's own special-token default unless told."""
        kwargs: dict[str, bool] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif self._add_bos is not None:
            kwargs["add_special_tokens"] = bool(self._add_bos)
        if add_special_tokens is None and self.prefix_token_id is not None:
            prefix = self.tokenizer.decode(self.prefix_token_id)
            if prefix and text.startswith(prefix):
                kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation token ids exactly as lm-eval 0.4.13 builds them."""
        ctx, cont, _ = self._encode_pair(context, continuation)
        return ctx, cont

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int], bool]:
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:], False
            return [self.prefix_token_id], cont, False
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):], whole[:len(ctx)] != ctx

    def format_chat(self, text: str) -> str:
        """`text` as one user turn in the tokenizer's chat template, with the generation prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise BackendError(f"tokenizer of {self.settings.path} has no chat template",
                               hint="drop --chat-template, or use a tokenizer that has one")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def _encode_prompt(self, prompt: str) -> list[int]:
        if self.settings.chat_template:
            return list(self.tokenizer.encode(self.format_chat(prompt), add_special_tokens=False))
        # lm-eval's tok_batch_encode, decided per prompt rather than by the batch's first prompt
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and prompt.startswith(bos):
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if self._add_bos is not None:
            return list(self.tokenizer.encode(prompt, add_special_tokens=bool(self._add_bos)))
        return list(self.tokenizer.encode(prompt))

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)
