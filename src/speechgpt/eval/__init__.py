"""Evaluation: scoring text (WER/CER, answer accuracy), the judge ASR, and the ASR/TTS/QA/latency harness + report."""
