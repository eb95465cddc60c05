"""Using an encoder: loading it, embeddings of clips, the export format, the embed command,
the HEAR API and the AudioSet classifier head."""
