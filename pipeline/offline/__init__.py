"""Work of the offline side: safe extraction, atomic placement in AMSHOME, the install."""
