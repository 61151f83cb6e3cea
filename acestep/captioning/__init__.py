"""Stage 1, captioning: tags (or a prose caption) and lyrics sidecars beside each audio file.

Tags and lyrics come from Qwen2.5-Omni (transformers in `qwen_omni`, or a llama-server in `llamacpp`); for
ACE-Step 1.5, a prose caption and sectioned lyrics from ACE-Step's own captioner and transcriber (`official`);
lyrics the user already has (embedded tags, `.lrc` files) are taken first; BPM, key and time signature
optionally come from DSP. Heavy parts (torch models, librosa, gptqmodel) are imported only when used, so import
the modules directly: `parse`, `junk`, `embedded_lyrics`, `runner`, `official`, `qwen_omni`, `llamacpp`, `cli`,
`tiny_omni`.
"""
