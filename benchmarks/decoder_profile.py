"""Where the fast decoder's time goes for large-v2 (random weights): log-mel, encoder +
cross-attention keys/values, and the decoding steps, per batch size. One process, one GPU.

    python benchmarks/decoder_profile.py --arch large-v2 --batches 64 128 --tokens 64 [--compile-encoder]

Features are random (log-mel is timed separately, on 128 clips of 2-10 s through the
feature extractor as ``evaluation.decode_dataset`` computes it); exactly ``--tokens`` steps.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def timed(fn, device, repeat=3):
    fn()
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def profile_batch(model, cfg, b: int, tokens: int, compile_encoder: bool, device) -> dict:
    """Seconds of the encoder, encoder + cross keys/values, the decoding steps and a whole
    batch, for one batch size."""
    from whisper_tune.inference.greedy import DecodeSpec, GreedyDecoder

    feats = torch.randn(b, cfg.num_mel_bins, 3000, device=device, dtype=torch.bfloat16)
    dec = GreedyDecoder(model, DecodeSpec(b, 4 + tokens), torch.bfloat16, compile_encoder=compile_encoder)
    prompt = [50258, 50259, 50360, 50364]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    with torch.inference_mode():
        enc = timed(lambda: dec.encoder(feats), device)
        enc_kv = timed(lambda: dec._encode(feats), device)
        steps = timed(lambda: [dec._run_step() for _ in range(tokens)], device)
        whole = timed(lambda: dec(feats, prompt, tokens, tokens), device)
    return {
        "batch": b,
        "encoder_s": enc,
        "encoder_plus_cross_kv_s": enc_kv,
        "steps_s": steps,
        "ms_per_step": 1000 * steps / tokens,
        "whole_s": whole,
        "clips_per_s": b / whole,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def main() -> None:
    from transformers import WhisperForConditionalGeneration

    from whisper_tune.modeling import architecture_config

    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="large-v2")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default=None)
    p.add_argument("--compile-encoder", action="store_true")

    a = p.parse_args()
    device = torch.device("cuda")
    cfg = architecture_config(a.arch)
    model = WhisperForConditionalGeneration(cfg).to(device, torch.bfloat16).eval()
    rows = []
    for b in a.batches:
        row = profile_batch(model, cfg, b, a.tokens, a.compile_encoder, device)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        torch.cuda.empty_cache()
    # log-mel of 128 synthetic 2-10 s clips through the feature extractor (as decode_dataset does)
    from transformers import WhisperFeatureExtractor

    from whisper_tune.features import log_mel

    fe = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(rng.uniform(2, 10) * 16000)).astype(np.float32) * 0.1 for _ in range(128)]
    mel = timed(lambda: log_mel(fe, clips, device=device), device, repeat=2)
    print(json.dumps({"log_mel_128_clips_s": round(mel, 4)}), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {"arch": a.arch, "rows": rows, "log_mel_128_s": mel, "gpu": torch.cuda.get_device_name()}, f, indent=1
            )


if __name__ == "__main__":
    main()
