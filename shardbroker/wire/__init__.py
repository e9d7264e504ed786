"""Embarcadero publish protocol: framing and validation (pure)."""
