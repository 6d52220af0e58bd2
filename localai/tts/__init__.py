"""Speech: the Voxtral TTS model, an offline fallback engine, the sentence splitter and audio output."""
