"""GLIDER serving: the hierarchical agent behind REST (and later gRPC), on vLLM multi-LoRA."""
