"""One run, here, in this process: process settings applied and recorded (`process`), the
data (`data`), the one training step and loop (`loop`), its measurements (`measure`), the
learning-curve plots (`plots`), pretrained float starts (`pretrained`), a run of whole
epochs with resume (`runner`) and a step-interleaved session (`interleave`).
"""
