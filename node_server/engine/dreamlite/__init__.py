"""The DreamLite family: `StreamEngine` (engine.py), the vision-aware Qwen3-VL prompt encoder
(encoder.py, its fixed-shape forward and the GPU patchifier), the edit denoiser and its CUDA graphs,
and the U-Net's aligned-head attention."""
