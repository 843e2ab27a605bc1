"""A tiny, randomly initialised LLaMA with a real tokenizer, built in-process: the base LLM of the tests.

    llm = tiny_llm()                       # < 1 s, no downloads, same weights for the same seed
    llm.model.model.layers[0].self_attn.q_proj     # nn.Linear(64, 64); k_proj/v_proj (64 -> 32, GQA)

The tokenizer is a `tokenizers` word-level model over a small vocabulary: every word of the docs/method.md §3
template (both domains), the chat-template words, some common title words, the digits (one token each) and
every ASCII punctuation mark (one token each); anything else is `[UNK]`. It adds `[BOS]` in front like a
LLaMA tokenizer, pads on the left with `[PAD]`, and has a ChatML-style chat template. " Yes" and " No" are
single tokens (whitespace is not part of a token), as are "Yes" and "No".
"""

from __future__ import annotations

import re
import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from cora_ray.config import AUTHORS_TEMPLATE
from cora_ray.llm.hashing import model_weight_hash
from cora_ray.llm.loaded import LoadedLLM, finish_loading

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TITLE_WORDS = (
    "The the A a An an of and in on at to for with from my me you your I II III IV Part Movie Book Item Story "
    "Toy Star Wars Day Days Night Love Man Men Woman Life World Time Last First King Queen Dead Game Girl Boy "
    "House Home City Little Big Good Bad New Old Red Blue Black White Dark Light Return Lost Story Tale War "
    "Wild Secret Heart Dream Death Sea Sky Sun Moon Fire Ice Blood Water One Two Three"
)
_CHAT_WORDS = "system user assistant You are helpful AI named trained by"


def tiny_vocab() -> list[str]:
    """The tiny tokenizer's vocabulary: special tokens, then words, digits and punctuation marks."""
    template_words = re.findall(r"[A-Za-z]+", AUTHORS_TEMPLATE)
    domain_words = ["movie", "movies", "book", "books", "unkow", "Yes", "No"]
    words = template_words + domain_words + _TITLE_WORDS.split() + _CHAT_WORDS.split()
    vocab = list(SPECIAL_TOKENS)
    for tok in [*words, *string.digits, *string.punctuation]:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over `tiny_vocab()`: left padding, [BOS] prepended, chat template."""
    vocab = tiny_vocab()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab.index(BOS))]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def tiny_llm(
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    answer_token: str = " Yes",
    negative_token: str | None = " No",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> LoadedLLM:
    """A frozen, randomly initialised `LlamaForCausalLM` with `tiny_tokenizer()`; deterministic per seed.

    Module names are the LLaMA ones (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj);
    k_proj/v_proj map d_model to num_kv_heads·head_dim (grouped-query attention, like SmolLM2). Input
    embeddings and LM head are tied, like SmolLM2. The global torch RNG is left untouched.
    """
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=attn_implementation,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(dtype)
    identity = (
        f"tiny-llama:seed={seed},hidden={hidden_size},layers={num_layers},heads={num_heads}/{num_kv_heads},"
        f"ffn={intermediate_size},vocab={config.vocab_size}"
    )
    return finish_loading(
        model,
        tokenizer,
        answer_token=answer_token,
        negative_token=negative_token,
        identity=identity,
        weight_hash=model_weight_hash(model),
    )
