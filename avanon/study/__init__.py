"""The study stage: train on every mirror (and the original), evaluate on the original validation split, report
the AP deltas and gate them (training/, evaluation/, report, regress, Paper F tables)."""
