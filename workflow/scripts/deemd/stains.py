"""The display colour of each stain, shared by the HCS export and the report's thumbnails."""

from __future__ import annotations

# The stains' display colours (RGB hex), as RxRx19a's own composites show them: Hoechst
# blue, ConA green, Phalloidin red, Syto14 cyan, WGA magenta. Keys are lower-case names
# without blanks or dashes.
STAIN_COLORS = {"hoechst": "0000FF", "cona": "00FF00", "phalloidin": "FF0000", "syto14": "00FFFF", "wga": "FF00FF"}
# Channels with other names take these in order.
FALLBACK_COLORS = ["0000FF", "00FF00", "FF0000", "00FFFF", "FF00FF", "FFFF00", "FFFFFF"]


def channel_color(name: str, index: int) -> str:
    """The display colour (RGB hex) of the channel ``name`` at position ``index``."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    return STAIN_COLORS.get(key, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])
