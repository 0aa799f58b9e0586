"""Training code shared by the contrastive, MoE, distillation and LLM trainers."""
