"""Training and evaluation: Trainer-based fine-tuning and a plain evaluation loop."""
