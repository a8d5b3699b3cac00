"""Data pipeline: packaged sources -> cleaning -> dedup -> PII scrubbing -> split -> token shards.

Modules (one concept each):
  sources.py      iter_documents(name): documents from installed data packages (never imported)
  safe_pickle.py  a refusing unpickler + an opcode-level string reader (no code ever runs)
  mix.py          seeded weighted interleaving of sources
  normalize.py    whitespace/control-char normalisation and HTML-tag stripping
  langid.py       script-based language id (en / zh / other)
  quality.py      Gopher-style heuristic quality filters
  dedup_exact.py  exact dedup by hash of normalised text
  minhash.py      MinHash signatures + LSH banding near-dedup (numpy)
  pii.py          PII scrubbing with validated matches (Luhn, ID checksum, ipaddress)
  split.py        train/val split by whole document (hash-based, seeded)
  report.py       per-step counts -> report.json / report.md
  pipeline.py     the `llmlab data build` pipeline
  shards.py       tokenised, memory-mapped token shards with a JSON header
  loader.py       fixed-length (x, y) window loader: DDP sharding, seeded, exactly resumable
"""
