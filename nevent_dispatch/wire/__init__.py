"""What goes on the wire: envelopes and batch bodies, signatures, sample events."""
