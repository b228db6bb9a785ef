"""A tiny random Qwen2 with a locally built tokenizer, for the CPU dev profile and tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences (so any text
encodes), wrapped with a ChatML chat template like Qwen's; the model is ``Qwen2ForCausalLM`` with random
weights. It exercises the same transformers code path as ``Qwen/Qwen2.5-1.5B-Instruct``; its answers are
gibberish by construction.
"""

from __future__ import annotations

from pathlib import Path

from bizra_voice.build_once import make_once

MARKER = "bizra-tiny-qwen.json"
VERSION = 2

_CORPUS = [
    "The capital of France is Paris. Water boils at one hundred degrees Celsius at sea level.",
    "A voice assistant listens, thinks and answers in short spoken sentences.",
    "What is the speed of light? About three hundred thousand kilometres per second.",
    "Hello, how can I help you today? Thanks, goodbye.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Questions end with a question mark?",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_qwen(directory: str | Path, seed: int = 0) -> Path:
    """Create (once) a tiny random Qwen2 + tokenizer in ``directory``; return the directory.

    Safe to call from several replicas at once (``make_once``).
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def build(path: Path) -> None:
        tokenizer = _build_tokenizer()
        config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            tie_word_embeddings=True, bos_token_id=None, initializer_range=0.5,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return make_once(directory, MARKER, VERSION, build)
