"""The bundle folder: its format, the chunk plan, writing chunks and verifying a bundle."""
