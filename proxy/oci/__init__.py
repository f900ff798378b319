"""OCI vocabulary: error table, reference grammar, media types and manifest parsing."""
