"""docs/method.md §3 prompts: build the question text and tokenise batches of rows into left-padded model inputs.

    #Question: A user has given high ratings to the following movies: "A (1995)", "B (1996)". Leverage the
    information to predict whether the user would enjoy the movie titled "C (1997)"? Answer with "Yes" or
    "No". \\n#Answer:

`build_prompt` makes that text from titles. `PromptEncoder.token_rows` turns rows (history item ids, target
item id) into one token list per row; cora_ray/data/batching.py left-pads a batch of them (to its longest
row) so that the last position of every row is the position whose next-token logits score the answer. It

- keeps the last `cfg.max_history` history items, oldest first, and drops the oldest of them while the
  prompt is longer than `cfg.max_prompt_tokens` (the question and the target title are never cut);
- wraps the question in the tokenizer's chat template when `cfg.chat_template` (docs/method.md §7b: the instruct
  model then answers "Yes"/"No" without a leading space);
- with `collab_placeholders=True` (CoLLM), puts one placeholder token after "A user" and one after the
  target title (or at `{user}` / `{item}` fields of the template) and returns their positions
  `user_pos`, `item_pos` (B,) (token indices, shifted by the padding when a batch is padded), where a
  CoLLM model writes its CF token embeddings;
- runs as a Ray Data `map_batches` callable on protocol rows (`__call__`, unpadded rows).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from cora_ray.config import PromptConfig
from cora_ray.data.batching import encode_rows, history_arrays, left_pad
from cora_ray.errors import ConfigError, DataError, ModelError

_FIELDS = {"history", "target", "domain", "domain_plural", "user", "item"}
_CHAT_SENTINEL = "\ue000CORA-QUESTION\ue000"  # private-use characters: never in a real template


def quote(title: str) -> str:
    """A title as it appears in the prompt: in double quotes."""
    return f'"{title}"'


def format_history(history_titles: Sequence[str], cfg: PromptConfig) -> str:
    """The `<ItemTitleList>`: the last `cfg.max_history` titles, oldest first, quoted, joined by ", "."""
    titles = (
        list(history_titles)[max(0, len(history_titles) - cfg.max_history) :] if cfg.max_history > 0 else []
    )
    return ", ".join(quote(t) for t in titles) if titles else cfg.empty_history


class PromptTemplate:
    """`cfg.template` parsed once; renders the question and reports where the placeholders are.

    With `placeholders`, a template without `{user}` gets it after its first "A user", and one without
    `{item}` gets it after `{target}`. Without, `{user}` / `{item}` fields (and the space before them)
    are removed.
    """

    def __init__(self, cfg: PromptConfig, placeholders: bool = False) -> None:
        template = cfg.template
        if placeholders:
            if "{user}" not in template:
                if "A user" not in template:
                    raise ConfigError(
                        "prompt.template: CoLLM needs a user placeholder; add a {user} field "
                        "(there is no 'A user' to put it after)"
                    )
                template = template.replace("A user", "A user {user}", 1)
            if "{item}" not in template:
                template = template.replace("{target}", "{target} {item}", 1)
        else:
            template = re.sub(r" \{(user|item)\}", "", template)  # "A user {user} has" -> "A user has"
            template = re.sub(r"\{(user|item)\} ?", "", template)  # "{user} liked" -> "liked"
        parts = []
        for literal, field, spec, conversion in string.Formatter().parse(template):
            if field is not None and (field not in _FIELDS or spec or conversion):
                raise ConfigError(
                    f"prompt.template: unsupported field {{{field}}}; allowed: {', '.join(sorted(_FIELDS))}"
                )
            parts.append((literal, field))
        self.parts = parts
        self.cfg = cfg

    def render(
        self, history: str, target: str, user_placeholder: str = "", item_placeholder: str = ""
    ) -> tuple[str, int, int, int]:
        """(question, char index of the user placeholder, of the item placeholder, of the suffix); -1 when
        absent.

        `history` is the formatted title list, `target` the quoted target title. The suffix is the part of
        the question that depends on the target item: it starts at the target title, or at the one space
        before it (so that a tokenizer sees ` "Title"` as it would inside the whole text).
        """
        values = {
            "history": history,
            "target": target,
            "domain": self.cfg.domain,
            "domain_plural": self.cfg.domain_plural,
            "user": user_placeholder,
            "item": item_placeholder,
        }
        out: list[str] = []
        n = 0
        user_at = item_at = target_at = -1
        for literal, field in self.parts:
            out.append(literal)
            n += len(literal)
            if field is None:
                continue
            if field == "user":
                user_at = n
            elif field == "item":
                item_at = n
            elif field == "target" and target_at < 0:
                target_at = n - 1 if n and out[-1].endswith(" ") else n
            value = values[field]
            out.append(value)
            n += len(value)
        return "".join(out), user_at, item_at, target_at


def build_prompt(
    history_titles: Sequence[str],
    target_title: str,
    cfg: PromptConfig,
    placeholders: tuple[str, str] | None = None,
) -> str:
    """The docs/method.md §3 question for one row (without any chat template).

    history_titles: the user's earlier positive items' titles, oldest first (only the last
    `cfg.max_history` are used; none gives `cfg.empty_history`). `placeholders`: (user, item) texts for
    CoLLM, placed as `PromptTemplate` describes.
    """
    template = PromptTemplate(cfg, placeholders=placeholders is not None)
    user_ph, item_ph = placeholders or ("", "")
    return template.render(format_history(history_titles, cfg), quote(target_title), user_ph, item_ph)[0]


@dataclass(frozen=True)
class _ChatWrap:
    """The tokenizer's chat template around one user message, as fixed text before and after it."""

    prefix: str
    suffix: str

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> _ChatWrap:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"prompt.chat_template is set but tokenizer {tokenizer.name_or_path!r} has no chat template"
            )
        text = _apply_chat(tokenizer, _CHAT_SENTINEL)
        if text.count(_CHAT_SENTINEL) != 1:
            raise ModelError("the tokenizer's chat template does not place the user message verbatim once")
        prefix, suffix = text.split(_CHAT_SENTINEL)
        wrap = cls(prefix, suffix)
        probe = 'Is this a question? Answer with "Yes" or "No". \\n#Answer:'
        if _apply_chat(tokenizer, probe) != wrap(probe):
            raise ModelError(
                "the tokenizer's chat template changes the user message; it cannot be precomputed"
            )
        return wrap

    def __call__(self, question: str) -> str:
        return self.prefix + question + self.suffix


def _apply_chat(tokenizer: PreTrainedTokenizerBase, content: str) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    return text


def split_problem(
    tokenizer: PreTrainedTokenizerBase,
    template: PromptTemplate,
    placeholders: bool,
    from_whole: bool = False,
) -> ConfigError | ModelError | None:
    """The error splitting prompts into a shared prefix and a per-item suffix would raise, None when they can be
    split: the item-independent fields (history, the user placeholder) must come before the target title, and
    the tokenizer must add special tokens only at the start (they stay in the prefix). CoLLM's placeholders
    are located through the whole prompt's token offsets, so they need `from_whole` (the item placeholder then
    lies in the suffix, after the target title)."""
    fields = [f for _, f in template.parts if f is not None]
    at = fields.index("target") if "target" in fields else -1
    late = [f for f in ("history", "user") if f in fields and fields.index(f) > at]
    early_item = "item" in fields and fields.index("item") < at
    if at < 0 or late or early_item or (placeholders and not from_whole):
        return ConfigError(
            "prompt.template: a shared prefix needs {target} after {history} (and after {user}, before {item}"
            f"; CoLLM placeholders only when whole prompts are split) (fields in order: {fields}); use "
            "model.delta_scope=all with this template"
        )
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    if full[len(full) - len(plain) :] != plain:
        return ModelError(
            f"tokenizer {tokenizer.name_or_path!r} appends special tokens after the text: a prompt cannot be "
            "split into a shared prefix and a per-item suffix (use model.delta_scope=all)"
        )
    return None


@dataclass
class TokenRows:
    """A batch of prompts as token rows, not padded: `ids` one token list per row; `positions` token indices
    inside each row: user_pos / item_pos (CoLLM placeholders), suffix_pos (the first token of the part
    that depends on the target item, with `split_suffix`); `texts` the prompts tokenised."""

    ids: list[list[int]]
    positions: dict[str, list[int]]
    texts: list[str]


class PromptEncoder:
    """Rows (history ids, target id) → left-padded `input_ids`, `attention_mask` (+ CoLLM positions).

    tokenizer: a fast (Rust-backed) Hugging Face tokenizer; its pad token pads on the left.
    titles_by_id: titles indexed by item id (`cora_ray.data.protocol.titles_by_id`).
    collab_placeholders: add the CoLLM user/item placeholder tokens and return `user_pos`, `item_pos`.
    placeholder_token: the placeholder's text; must be one token (default: the unk token, else pad).
    split_suffix: tokenise the prefix (everything before the target title) and the suffix (the target title
      and what follows) separately and return `suffix_pos`: then a row's prefix tokens depend on the prefix
      text alone, identical for all of a user's candidates (`model.delta_scope` user_prefix / suffix share
      them; docs/method.md §2.5). Off, the whole text is tokenised at once (the paper's method).
    split_from_whole: with `split_suffix`, tokenise the whole text at once (exactly the tokens of
      `split_suffix=False`) and put `suffix_pos` at the first token that reaches the suffix's text: how a
      model trained on whole prompts (TALLRec, zero-shot, CoLLM) scores with shared prefixes. Rows whose prefix
      tokens differ (a merge across the boundary) simply do not share (the Scorer groups by prefix tokens).

    Budget: every title's token count (as ` "Title",`) is computed once here; a prompt over
    `cfg.max_prompt_tokens` drops as many oldest titles as those counts say are needed and only that row
    is tokenised again (and again, one title less, in the rare case a merge at a boundary differs).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        cfg: PromptConfig,
        titles_by_id: Sequence[str],
        collab_placeholders: bool = False,
        placeholder_token: str | None = None,
        split_suffix: bool = False,
        split_from_whole: bool = False,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError("PromptEncoder needs a fast (tokenizers-backed) tokenizer")
        if tokenizer.pad_token_id is None:
            raise ModelError("the tokenizer has no pad token; load it with cora_ray.llm (which sets one)")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.titles = list(titles_by_id)
        self.collab = collab_placeholders
        self.template = PromptTemplate(cfg, placeholders=collab_placeholders)
        self.split_suffix = bool(split_suffix)
        self.split_from_whole = self.split_suffix and bool(split_from_whole)
        if self.split_suffix:
            problem = split_problem(tokenizer, self.template, self.collab, self.split_from_whole)
            if problem is not None:
                raise problem
        self.chat = _ChatWrap.from_tokenizer(tokenizer) if cfg.chat_template else None
        # A chat-templated text carries its own special tokens (BOS included when the model wants one).
        self.add_special_tokens = not cfg.chat_template
        self.placeholder = ""
        self.placeholder_id = -1
        if collab_placeholders:
            self.placeholder = placeholder_token or tokenizer.unk_token or tokenizer.pad_token
            ids = tokenizer.encode(self.placeholder, add_special_tokens=False)
            if len(ids) != 1:
                raise ModelError(f"placeholder token {self.placeholder!r} is not one token: {ids}")
            self.placeholder_id = int(ids[0])
        self.title_costs = self._title_costs()
        self._check_target_fits()

    # ---- text ------------------------------------------------------------------------------------------

    def _title(self, item_id: int) -> str:
        if not 0 < item_id < len(self.titles):
            raise DataError(
                f"item id {item_id} has no title (titles_by_id covers ids 1..{len(self.titles) - 1})"
            )
        return self.titles[item_id]

    def _render(self, history: np.ndarray, target_id: int) -> tuple[str, int, int, int]:
        """Full model text of one row (history already cut to what is kept), the placeholders' and the
        suffix's char indices."""
        titles = [quote(self._title(int(i))) for i in history]
        history_text = ", ".join(titles) if titles else self.cfg.empty_history
        question, user_at, item_at, suffix_at = self.template.render(
            history_text, quote(self._title(int(target_id))), self.placeholder, self.placeholder
        )
        if self.chat is None:
            return question, user_at, item_at, suffix_at
        shift = len(self.chat.prefix)
        return self.chat(question), user_at + shift, item_at + shift, suffix_at + shift

    def prompt_text(self, history_ids: Sequence[int], target_id: int) -> str:
        """The exact text `encode` tokenises for one row (after the token budget is applied)."""
        enc = self.encode([list(history_ids)], [target_id], return_text=True)
        return enc["text"][0]

    # ---- budget ----------------------------------------------------------------------------------------

    def _title_costs(self) -> np.ndarray:
        """Tokens each title adds to a history list (` "Title",`); index = item id, 0 for padding."""
        texts = [f" {quote(t)}," for t in self.titles[1:]]
        costs = np.zeros(len(self.titles), dtype=np.int64)
        if texts:
            ids = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            costs[1:] = [len(x) for x in ids]
        return costs

    def _check_target_fits(self) -> None:
        """Fail at construction, not mid-training, when the longest title cannot fit even without history."""
        if len(self.titles) < 2:
            return
        worst = int(np.argmax(self.title_costs[1:])) + 1
        text = self._render(np.zeros(0, dtype=np.int64), worst)[0]
        n = len(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])
        if n > self.cfg.max_prompt_tokens:
            raise DataError(
                f"item {worst} ({self.titles[worst][:60]!r}) makes a {n}-token prompt even with no history; "
                f"raise prompt.max_prompt_tokens (now {self.cfg.max_prompt_tokens})"
            )

    # ---- encoding --------------------------------------------------------------------------------------

    def _tokenize(
        self, rendered: list[tuple[str, int, int, int]]
    ) -> tuple[list[list[int]], list[list[tuple[int, int]]] | None, list[int] | None]:
        """Token ids of rendered rows (+ char offsets for CoLLM; + each row's suffix_pos with split_suffix)."""
        if self.split_from_whole:
            enc = self.tokenizer(
                [r[0] for r in rendered],
                add_special_tokens=self.add_special_tokens,
                return_attention_mask=False,
                return_offsets_mapping=True,
            )
            # the suffix starts at the first token with a character at or after the suffix's first character
            # (special tokens the tokenizer adds have empty (0, 0) spans and stay in the prefix)
            starts = [
                next((j for j, (_, end) in enumerate(offs) if end > r[3]), len(offs))
                for offs, r in zip(enc["offset_mapping"], rendered, strict=True)
            ]
            return enc["input_ids"], (enc["offset_mapping"] if self.collab else None), starts
        if self.split_suffix:
            prefixes = self.tokenizer(
                [r[0][: r[3]] for r in rendered],
                add_special_tokens=self.add_special_tokens,
                return_attention_mask=False,
            )["input_ids"]
            suffixes = self.tokenizer(
                [r[0][r[3] :] for r in rendered], add_special_tokens=False, return_attention_mask=False
            )["input_ids"]
            return [p + q for p, q in zip(prefixes, suffixes, strict=True)], None, [len(p) for p in prefixes]
        enc = self.tokenizer(
            [r[0] for r in rendered],
            add_special_tokens=self.add_special_tokens,
            return_attention_mask=False,
            return_offsets_mapping=self.collab,
        )
        return enc["input_ids"], (enc["offset_mapping"] if self.collab else None), None

    def token_rows(self, histories: Any, target_ids: Any) -> TokenRows:
        """Prompt tokens of a batch of rows, each row its own length (no padding).

        histories: per row the earlier positive item ids, oldest first (any form `history_arrays` takes).
        target_ids: (B,) target item ids. cora_ray/data/batching.py pads them into a model batch."""
        targets = np.asarray(target_ids, dtype=np.int64).reshape(-1)
        rows = history_arrays(histories)
        if len(rows) != len(targets):
            raise DataError(f"{len(rows)} histories for {len(targets)} target items")
        max_hist = self.cfg.max_history
        rows = [h[max(0, len(h) - max_hist) :] if max_hist > 0 else h[:0] for h in rows]
        keep = [len(h) for h in rows]  # how many of the newest titles each row keeps

        rendered = [self._render(h, t) for h, t in zip(rows, targets, strict=True)]
        ids, offsets, suffix_pos = self._tokenize(rendered)
        limit = self.cfg.max_prompt_tokens
        over = [i for i, x in enumerate(ids) if len(x) > limit]
        while over:
            for i in over:
                if keep[i] == 0:
                    raise DataError(
                        f"row with target item {targets[i]}: the prompt is {len(ids[i])} tokens with no history "
                        f"left; raise prompt.max_prompt_tokens (now {limit})"
                    )
                kept = rows[i][len(rows[i]) - keep[i] :]
                saved = np.cumsum(self.title_costs[kept])  # oldest first
                drop = int(np.searchsorted(saved, len(ids[i]) - limit)) + 1
                keep[i] -= min(max(drop, 1), keep[i])
                rendered[i] = self._render(rows[i][len(rows[i]) - keep[i] :], targets[i])
            new_ids, new_offsets, new_suffix_pos = self._tokenize([rendered[i] for i in over])
            for j, i in enumerate(over):
                ids[i] = new_ids[j]
                if offsets is not None and new_offsets is not None:
                    offsets[i] = new_offsets[j]
                if suffix_pos is not None and new_suffix_pos is not None:
                    suffix_pos[i] = new_suffix_pos[j]
            over = [i for i in over if len(ids[i]) > limit]

        positions: dict[str, list[int]] = {}
        if self.collab:
            assert offsets is not None
            for name, at in (("user_pos", 1), ("item_pos", 2)):
                positions[name] = [
                    self._token_at(ids[i], offsets[i], rendered[i][at]) for i in range(len(ids))
                ]
        if suffix_pos is not None:
            positions["suffix_pos"] = suffix_pos
        return TokenRows(ids=ids, positions=positions, texts=[r[0] for r in rendered])

    def encode(
        self,
        histories: Any,
        target_ids: Any,
        return_tensors: Literal["np", "pt"] = "np",
        return_text: bool = False,
    ) -> dict[str, Any]:
        """Tokenise a batch of rows into input_ids, attention_mask (B, T) int64, left-padded to the batch's
        longest prompt (cora_ray/data/batching.py `left_pad`); with collab placeholders also user_pos, item_pos
        (B,) int64, indices into T; with `return_text` also `text` (list of str)."""
        tokens = self.token_rows(histories, target_ids)
        out: dict[str, Any] = left_pad(tokens.ids, int(self.tokenizer.pad_token_id), tokens.positions)
        if return_tensors == "pt":
            out = {k: torch.from_numpy(v) for k, v in out.items()}
        if return_text:
            out["text"] = tokens.texts
        return out

    def _token_at(self, ids: list[int], offsets: list[tuple[int, int]], char_at: int) -> int:
        """Index of the placeholder token that starts at character `char_at`."""
        for j, (start, end) in enumerate(offsets):
            if start == char_at and end > start and ids[j] == self.placeholder_id:
                return j
        raise DataError(f"placeholder {self.placeholder!r} not found as one token at character {char_at}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Ray Data `map_batches` function on protocol rows (numpy batch format): `batching.encode_rows`.

        In: user_id, item_id, label, history (+ any other columns, dropped). Out: input_ids (one int32 array
        per row, its own length: not padded), user_id, item_id (B,) int64; label (B,) float32 (the BCE
        target); history (B, 25) int64 left-padded with 0; user_pos, item_pos (B,) int64 with collab
        placeholders (indices inside each row). `batching.collate` pads a training batch to its longest row.
        """
        if "label" not in batch:
            raise DataError(f"prompt encoding: batch has no 'label' column (has {sorted(batch)})")
        return encode_rows(self, batch)
