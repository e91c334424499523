"""The training stage: LoRA fine-tuning on (prompt, completion) pairs with the prompt masked (``lora.py``)."""

from tinyforge.train.lora import Example, LoraConfig, collate, encode_example, launch_training, train_lora

__all__ = ["Example", "LoraConfig", "collate", "encode_example", "launch_training", "train_lora"]
