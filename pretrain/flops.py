"""Training FLOPs per token, MFU and a table of known GPU peaks.

Formulas (``../shared/research/performance.md`` §2):

* decoder (PaLM appendix B, nanoGPT/torchtitan): ``F_tok = 6·N + 12·L·d·T`` where N counts every
  parameter that does a matmul per token (the tied LM head included, position embeddings excluded);
* encoder with sparse MLM prediction: ``F_tok = 6·N_body + 12·L·d·T + 6·p·(d·V + d²)`` where
  ``N_body`` are the encoder-layer weights and ``p`` the fraction of positions that go through the
  LM head (the mask rate). Only useful FLOPs are counted, so a dense head never inflates MFU.

``MFU = F_tok · tokens/s / (n_gpu · peak)``; the peak is dense BF16/FP16 tensor-core throughput
without sparsity. CPUs have no entry: MFU is then absent from the logs.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), dense bf16 FLOP/s). First match wins, so more specific
# names come first. Sources: NVIDIA datasheets as reproduced in performance.md §1 (A100/H100/H200);
# L4/L40S/A10/V100 from NVIDIA product pages (dense, no sparsity; V100 is FP16).
GPU_PEAK_BF16: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),  # AWS A10G is clocked lower than A10; close enough for an MFU estimate
    ("A10", 125e12),
    ("V100", 125e12),
]


def gpu_peak_flops(device_name: str | None = None) -> float | None:
    """Dense bf16 peak of the current CUDA device (or ``device_name``); ``None`` when unknown/CPU."""
    if device_name is None:
        import torch

        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, peak in GPU_PEAK_BF16:
        if key.lower() in device_name.lower():
            return peak
    return None


def decoder_flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """``6N + 12·L·d·T`` (attention counted in full; causal sparsity not discounted, as torchtitan)."""
    return 6.0 * n_params + 12.0 * layers * hidden * seq_len


def encoder_mlm_flops_per_token(n_body: int, layers: int, hidden: int, seq_len: int, vocab: int,
                                predict_fraction: float) -> float:
    """``6·N_body + 12·L·d·T + 6·p·(d·V + d²)``: the LM head only at predicted positions."""
    return 6.0 * n_body + 12.0 * layers * hidden * seq_len + 6.0 * predict_fraction * (hidden * vocab + hidden * hidden)


def mfu(flops_per_token: float, tokens_per_s: float, n_devices: int, peak: float | None) -> float | None:
    if not peak or not flops_per_token or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (n_devices * peak)


def logits_bytes(micro_batch: int, seq_len: int, vocab: int, predicted_fraction: float,
                 bytes_per_value: int = 4) -> float:
    """fp32 logits of one micro-batch: ``b·s·p·V`` values, ``p`` the fraction of positions an objective
    sends through its vocabulary head (``Objective.predicted_fraction``: 1 for next-token
    prediction, the masking rate for sparse MLM heads)."""
    return micro_batch * seq_len * predicted_fraction * vocab * bytes_per_value


def activation_bytes(micro_batch: int, seq_len: int, hidden: int, layers: int, heads: int,
                     bytes_per_value: int = 2, attention_matrix: bool = True) -> float:
    """Activation memory of one micro-batch (Korthikanti et al. 2022: ``s·b·h·(34 + 5·a·s/h)`` per layer
    in 16-bit); scaled by ``bytes_per_value / 2`` for fp32. ``attention_matrix=False`` drops the
    ``5·a·s/h`` term: fused SDPA/flash kernels do not store the s×s attention matrix."""
    per_layer = seq_len * micro_batch * hidden * (34 + (5 * heads * seq_len / hidden if attention_matrix else 0))
    return layers * per_layer * bytes_per_value / 2
