"""The shared-memory segment: layout (pure), lifecycle, single writer, readers."""
