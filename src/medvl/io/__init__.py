"""Input/output shared by every stage: images (`images`, `dicom`), JSONL shards and rejects
(`jsonl`), and atomic file writes (`files`)."""
