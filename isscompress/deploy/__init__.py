"""What a deployer runs after shrinking: int8 quantisation (export, report and eval use it)."""
