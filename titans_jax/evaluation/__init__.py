"""Evaluation: held-out perplexity / bits-per-byte, the S-NIAH grid, greedy samples."""
