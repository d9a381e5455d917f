"""ControlNet-LLLite for both families: the adapter folded into the U-Net's module tree
(adapter.py), when and from which image it refreshes (runner.py), and the optical flow that warps
the previous output for the temporal adapter (flow.py)."""
