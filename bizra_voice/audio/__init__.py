"""Per-session audio plumbing: Ogg/Opus stream codec and 80 ms framing (no Ray, no torch)."""

from bizra_voice.audio.framing import FrameBuffer
from bizra_voice.audio.opus import InvalidAudio, OggOpusDecoder, OggOpusEncoder, decode_ogg, encode_ogg

__all__ = ["FrameBuffer", "InvalidAudio", "OggOpusDecoder", "OggOpusEncoder", "decode_ogg", "encode_ogg"]
