"""Small shared utilities: files, hashing, sizes, paths, timestamps, progress display, skipped-file reasons."""
