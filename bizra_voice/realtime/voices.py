"""OpenAI's voice names -> PersonaPlex presets, checked against the replica's voice catalog.

Realtime clients pick OpenAI voices (LiveKit's plugin defaults to ``marin``); PersonaPlex has its own
presets (NATF0-3, NATM0-3, VARF0-4, VARM0-4) and custom voices. A ``session.update`` names either; the
name is resolved here at once, so an unknown voice is refused at ``session.update`` (param
``session.audio.output.voice``), never later when the engine session opens. The table is configurable
(``realtime.voices`` in the app config); a name that is not in the table must be in the catalog. The
catalog may be given as a function, read at each lookup: a custom voice added while a session runs can
then be chosen by a live voice change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from bizra_voice.realtime.errors import RealtimeError

# OpenAI's built-in Realtime voices -> presets, by the voices' apparent gender: the female-sounding ones
# to NAT*F/VAR*F, the male-sounding ones to NAT*M/VAR*M. marin (OpenAI's and LiveKit's default) -> NATF2
# (LiveKit's PersonaPlex default), cedar (OpenAI's other recommended voice) -> NATM1 (this server's default).
DEFAULT_VOICE_TABLE: dict[str, str] = {
    "alloy": "NATF0", "coral": "NATF1", "marin": "NATF2", "sage": "NATF3", "shimmer": "VARF0",
    "ash": "NATM0", "cedar": "NATM1", "ballad": "NATM2", "echo": "NATM3", "verse": "VARM0",
}


class VoiceMap:
    """Resolves a client's voice name to the engine voice it will speak with."""

    def __init__(self, table: Mapping[str, str], catalog: Collection[str] | Callable[[], Collection[str]]) -> None:
        self.table = {name.lower(): preset for name, preset in table.items()}
        self._catalog = catalog

    @property
    def catalog(self) -> set[str]:
        return set(self._catalog() if callable(self._catalog) else self._catalog)

    def resolve(self, name: str, *, param: str = "session.audio.output.voice",
                event_id: str | None = None) -> str:
        """The engine voice for ``name`` (an OpenAI name from the table, or a catalog name); RealtimeError
        with ``param`` when there is none."""
        voice = self.table.get(name.lower(), name)
        catalog = self.catalog
        if voice in catalog:
            return voice
        known = ", ".join(sorted(catalog)[:24]) or "none installed"
        mapped = [n for n, v in sorted(self.table.items()) if v in catalog]
        if voice != name:
            why = f"Voice {name!r} maps to {voice!r}, which this server does not have"
        else:
            why = f"Unknown voice {name!r}"
        raise RealtimeError(f"{why}. Voices here: {known}; OpenAI names mapped to them: "
                            f"{', '.join(mapped) or 'none'} (app config realtime.voices).", "invalid_value",
                            param=param, event_id=event_id)
