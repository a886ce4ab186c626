"""The guard at runtime: screening around our own generation (in-process) and `cai guard serve`, an
OpenAI-compatible proxy that screens requests and halts streamed answers before flagged text reaches the client."""
