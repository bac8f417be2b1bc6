"""From the runs table to what people read: statistics (`stats`: medians, t-intervals,
ratios, effects), accuracy parity (`equivalence`: TOST and exact identity), parity classes
(`parity_classes`) and the reports (`report`). Imports nothing of `harness.run`: building a
report never loads the trainer."""
