"""The embedded demo model's ingredients: classical style operations it imitates, its training data
and its architecture. Training lives in `tools/train_demo_model.py`; the weights in
`node_server/models/demo/`; `docs/DEMO_MODEL.md` says how they were made."""
