"""Input/output shared by every stage: images (`images`, `dicom`), JSONL shards and rejects
(`jsonl`), atomic file writes (`files`), the console's log format (`console`), and the offline
assets — packaged weights materialised into medvl's cache (`offline`)."""
