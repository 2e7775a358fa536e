"""The offline side: safe extraction, atomic placement in AMSHOME, applying deltas, the unpack. Stands on
bundle/ and util/ alone: it loads no module of online/ or pack/."""
