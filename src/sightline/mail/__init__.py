"""Email: parsing raw messages, the spam corpus, and the synthetic image-evasion messages."""
