"""Voxtral TTS (mistralai/Voxtral-4B-TTS-2603) as a native torch port of the vLLM-Omni reference."""
