"""Stage 1, captioning: tags and lyrics sidecars beside each audio file.

Tags and lyrics come from Qwen2.5-Omni (transformers in `qwen_omni`, or a llama-server in `llamacpp`); lyrics
the user already has (embedded tags, `.lrc` files) are taken first; BPM and key optionally come from DSP.
Heavy parts (torch models, librosa, gptqmodel) are imported only when used, so import the modules
directly: `parse`, `junk`, `embedded_lyrics`, `runner`, `qwen_omni`, `llamacpp`, `cli`, `tiny_omni`.
"""
