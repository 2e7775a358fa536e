"""What both sides read from a bundle folder: its format, SHA256SUMS, signatures and trust, reading and
checking chunks, receipts and tree identity, the rules of deltas, and verify. Imports nothing of online/."""
