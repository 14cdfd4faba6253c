"""SpeechGPT rebuilt."""
