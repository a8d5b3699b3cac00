"""DeepSpeed placeholder replaced below."""
