"""GLIDER serving: the hierarchical agent behind REST and gRPC, on vLLM multi-LoRA."""
