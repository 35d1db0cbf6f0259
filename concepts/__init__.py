"""Label sets, caption entry matching and MetaCLIP-style balancing: plain Python, no Beam, no torch."""
