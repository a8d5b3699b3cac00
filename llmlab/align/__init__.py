"""Alignment: reward models (Bradley-Terry, Plackett-Luce), DPO/IPO/KTO/ORPO, GRPO, PPO and
Constitutional AI, on our own Transformer. Losses are plain functions of tensors so each one can
be checked against a hand computation; the trainers are short loops around them."""
