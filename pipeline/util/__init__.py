"""Small shared utilities: files, hashing, sizes, paths, time."""
