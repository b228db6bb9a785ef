"""A tiny random Whisper with a locally built tokenizer and feature extractor, for the CPU dev profile and tests.

Nothing is downloaded: the model is ``WhisperForConditionalGeneration`` with whisper-tiny's dimensions
(d_model 384, 4 encoder + 4 decoder layers, 6 heads, 80 mel bins) and random weights; the tokenizer is a
byte-level BPE trained here on a few sentences with Whisper's special tokens (so any text encodes); the
feature extractor is transformers' ``WhisperFeatureExtractor`` (its mel filters are computed, not fetched).
It runs the same transformers code path as ``openai/whisper-small``; its transcripts are gibberish by
construction (tests check the plumbing and the event shape, not the words).
"""

from __future__ import annotations

from pathlib import Path

from bizra_voice.build_once import make_once

MARKER = "bizra-tiny-whisper.json"
VERSION = 1

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Hello, can you hear me? Tell me about the speed of light, please.",
    "How many minutes are in a day? Explain how a voice assistant works.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Thanks, goodbye.",
]


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|startoftranscript|>", additional_special_tokens=SPECIALS[2:])


def make_tiny_whisper(directory: str | Path, seed: int = 0) -> Path:
    """Create (once) a tiny random Whisper + tokenizer + feature extractor in ``directory``; return it.

    Safe to call from several replicas at once (``make_once``).
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    def build(path: Path) -> None:
        tokenizer = _build_tokenizer()
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
        config = WhisperConfig(
            vocab_size=len(tokenizer), num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
            encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
            max_source_positions=1500, max_target_positions=448,
            decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|startoftranscript|>"],
            eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
            begin_suppress_tokens=None, suppress_tokens=None,
        )
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
        gen = model.generation_config
        gen.decoder_start_token_id = ids["<|startoftranscript|>"]
        gen.eos_token_id = ids["<|endoftext|>"]
        gen.pad_token_id = ids["<|endoftext|>"]
        gen.no_timestamps_token_id = ids["<|notimestamps|>"]
        gen.is_multilingual = False
        gen.forced_decoder_ids = None
        gen.begin_suppress_tokens = None
        gen.suppress_tokens = None
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        WhisperFeatureExtractor(feature_size=80, sampling_rate=16000).save_pretrained(path)

    return make_once(directory, MARKER, VERSION, build)
