"""Building a bundle from a mirror: chunk plans, 7z chunks, the tool folder, delta bases (online side)."""
