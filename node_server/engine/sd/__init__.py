"""The SD family (CLIP-conditioned SD-class models): `SDStreamEngine` (engine.py) and its CLIP
prompt encoder (encoder.py)."""
